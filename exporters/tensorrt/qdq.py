"""TensorRT's explicit-quantization rules for QuantizeLinear / DequantizeLinear, checked on the graph.

What TensorRT requires (sources: onnx-tensorrt ``docs/operators.md`` — "QuantizeLinear: y_zero_point
must be 0", "DequantizeLinear: INT8, FP8, FP4, INT4, x_zero_point must be zero"; the parser's
Q/DQ importer, onnx-tensorrt ``onnxOpImporters.cpp`` (release/10.1-GA): UINT8 inputs rejected,
"Scale coefficients must all be positive", "TensorRT only supports symmetric quantization",
scale and zero point of equal volume, per-axis quantization for weights only — "Activations-
quantization does not support per-axis quantization" — with one scale per channel of the
quantized axis; NVIDIA's "Explicit Quantization" guide: pre-quantized weights need a
DequantizeLinear between the weights and the operator that uses them):

* quantized type INT8 (UINT8 and INT32 are errors: an ONNX QuantizeLinear without a zero point
  is UINT8 by the ONNX spec; ONNX Runtime's default quantized bias is an INT32 DequantizeLinear);
  FP8/INT4/FP4 are warnings (TensorRT accepts them on GPUs that support them; edgekit's INT8
  pipeline does not produce or validate them);
* zero point a build-time constant of zeros (symmetric quantization), same size as the scale;
* scale strictly positive and finite;
* per-channel scales only on constant weights, along the output-channel axis of the weighted
  operator that consumes them: Conv 0, ConvTranspose 1, Gemm 0 (transB=1) or 1 (transB=0),
  MatMul the last axis; the ``axis`` attribute must be explicit (ONNX defaults to 1, the parser
  to 0);
* placement: every QuantizeLinear feeds DequantizeLinear nodes; every DequantizeLinear reads a
  QuantizeLinear or constant weights; a weighted op whose input is quantized should have its
  weights quantized too (else TensorRT runs it in float).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph import GraphView
from .ops import ONNX_TYPES

Q, DQ = "QuantizeLinear", "DequantizeLinear"
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def qdq_tensors(g: GraphView) -> set[str]:
    """Tensors that carry quantized data legitimately: Q outputs, DQ data inputs, Q/DQ zero points."""
    out = set()
    for node in g.nodes:
        if node.op_type == Q and node.output:
            out.add(node.output[0])
        elif node.op_type == DQ and node.input:
            out.add(node.input[0])
        if node.op_type in (Q, DQ) and len(node.input) > 2 and node.input[2]:
            out.add(node.input[2])
    return out


def quantized_type(g: GraphView, node: Any) -> str | None:
    """The integer/low-precision type a Q produces or a DQ consumes (ONNX semantics)."""
    if node.op_type == Q:
        if len(node.input) > 2 and node.input[2]:
            return g.type_name(node.input[2])
        to = g.attr(node, "output_dtype", 0)
        if to:
            return ONNX_TYPES.get(to, f"type {to}")
        return "UINT8"  # ONNX: without y_zero_point (and output_dtype) the output is uint8
    t = g.type_name(node.input[0])
    if t is None and node.input[0] in g.producer and g.producer[node.input[0]].op_type == Q:
        t = quantized_type(g, g.producer[node.input[0]])
    return t


def check_qdq(g: GraphView, report) -> None:
    for node in g.nodes:
        if node.op_type in (Q, DQ) and node.domain in ("", "ai.onnx"):
            _check_one(g, node, report)
        elif node.op_type in WEIGHTED:
            _check_weighted(g, node, report)


def _check_one(g: GraphView, node: Any, report) -> None:
    name, op = g.name(node), node.op_type

    def err(message: str) -> None:
        report.error("qdq", name, op, message)

    def warn(message: str) -> None:
        report.warning("qdq", name, op, message)

    qtype = quantized_type(g, node)
    if qtype == "UINT8":
        why = " (no zero point given, so ONNX makes it UINT8)" if op == Q and len(node.input) < 3 else ""
        err(f"UINT8 quantization{why}: TensorRT quantizes to signed INT8 only (symmetric, zero point 0); "
            "quantize activations and weights as QInt8")
    elif qtype == "INT32":
        err("INT32 DequantizeLinear (a quantized bias): TensorRT's DequantizeLinear takes INT8, FP8, FP4 or INT4; "
            "keep biases in float (onnxruntime quantize_static: extra_options={'QuantizeBias': False})")
        return  # the remaining rules are about INT8 scales and placement
    elif qtype in ("FP8", "INT4", "FP4"):
        warn(f"{qtype} quantization: TensorRT accepts it only on GPUs that support {qtype}; edgekit's INT8 "
             "pipeline neither produces nor validates it")
    elif qtype is not None and qtype != "INT8":
        err(f"{qtype} quantization: TensorRT supports INT8 (and FP8/INT4/FP4) Q/DQ only")

    scale = g.const(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        warn("the scale is not a build-time constant: TensorRT needs constant scales to fuse Q/DQ")
    else:
        s = np.asarray(scale, dtype=np.float64)
        if s.size == 0 or not np.all(np.isfinite(s)) or not np.all(s > 0):
            bad = s.reshape(-1)[~(np.isfinite(s.reshape(-1)) & (s.reshape(-1) > 0))][:3]
            err(f"scale must be positive and finite, found {bad.tolist()}")
    if len(node.input) > 2 and node.input[2]:
        zp = g.const(node.input[2])
        if zp is None:
            err("the zero point is not a build-time constant: TensorRT needs a constant zero point of 0")
        elif np.any(np.asarray(zp).astype(np.int64) != 0):
            vals = sorted(set(np.asarray(zp).astype(np.int64).reshape(-1).tolist()))[:4]
            err(f"asymmetric quantization (zero point {vals}): TensorRT supports symmetric quantization only, "
                "the zero point must be 0")
        elif scale is not None and np.asarray(zp).size != np.asarray(scale).size:
            err(f"zero point has {np.asarray(zp).size} values, scale {np.asarray(scale).size}: TensorRT needs "
                "the same volume")
    if scale is not None and np.asarray(scale).size > 1:
        _check_per_channel(g, node, np.asarray(scale), err, warn)
    _check_placement(g, node, scale, err, warn)


def _check_per_channel(g: GraphView, node: Any, scale: np.ndarray, err, warn) -> None:
    data = node.input[0]
    weights = g.is_const(data) or (node.op_type == DQ and data in g.producer
                                   and g.producer[data].op_type == Q and g.is_const(g.producer[data].input[0]))
    if not weights:
        err("per-channel quantization of an activation: TensorRT quantizes activations per tensor only "
            "(per-channel scales are for constant weights)")
        return
    shape = g.shape(data)
    rank = len(shape) if shape is not None else None
    if scale.ndim > 1 and rank is not None and scale.ndim == rank:
        warn("blocked quantization: TensorRT supports blocked scales for weight-only INT4/FP4/FP8 quantization; "
             "edgekit's INT8 pipeline uses one scale per output channel")
        return
    if scale.ndim > 1:
        err(f"per-channel scale of rank {scale.ndim}: TensorRT expects a 1-D scale (one per channel)")
        return
    if not g.has_attr(node, "axis"):
        err("per-channel Q/DQ without an explicit axis: ONNX reads it as axis 1, TensorRT's parser as axis 0; "
            "set axis explicitly")
        return
    axis = int(g.attr(node, "axis"))
    if rank is not None and axis < 0:
        axis += rank
    if shape is not None and 0 <= axis < len(shape) and isinstance(shape[axis], int) and shape[axis] != scale.size:
        err(f"{scale.size} scales for axis {axis} of size {shape[axis]}: TensorRT needs one scale per channel")
    for consumer, idx, expected in _weight_uses(g, node, rank):
        if expected is None:
            warn(f"per-channel scales feed {consumer.op_type} '{g.name(consumer)}' input {idx}: TensorRT applies "
                 "per-channel scales to the weights of Conv, ConvTranspose, Gemm and MatMul")
        elif axis != expected:
            err(f"per-channel axis {axis} on the weights of {consumer.op_type} '{g.name(consumer)}': TensorRT "
                f"needs the output-channel axis {expected} (Conv 0, ConvTranspose 1, Gemm 0 with transB=1 "
                "else 1, MatMul the last axis)")


def _weight_uses(g: GraphView, node: Any, rank: int | None):
    """(consumer, input index, expected per-channel axis or None) for the weights this Q/DQ carries."""
    dq_outputs = [node.output[0]] if node.op_type == DQ else \
        [c.output[0] for c, _ in g.consumers.get(node.output[0], []) if c.op_type == DQ]
    for out in dq_outputs:
        for consumer, idx in g.consumers.get(out, []):
            op = consumer.op_type
            expected = None
            if op == "Conv" and idx == 1:
                expected = 0
            elif op == "ConvTranspose" and idx == 1:
                expected = 1
            elif op == "Gemm" and idx == 1:
                expected = 0 if g.attr(consumer, "transB", 0) else 1
            elif op == "MatMul" and idx == 1 and rank:
                expected = rank - 1
            yield consumer, idx, expected


def _check_placement(g: GraphView, node: Any, scale, err, warn) -> None:
    if node.op_type == Q:
        out = node.output[0]
        for consumer, _ in g.consumers.get(out, []):
            if consumer.op_type != DQ:
                err(f"QuantizeLinear feeds {consumer.op_type} '{g.name(consumer)}' directly: TensorRT needs every "
                    "QuantizeLinear followed by a DequantizeLinear (Q/DQ pairs)")
        if out in g.output_names:
            warn("QuantizeLinear output is a network output: the engine would return INT8 data")
        return
    data = node.input[0]
    if g.is_const(data):
        return  # pre-quantized weights
    producer = g.producer.get(data)
    if producer is None:
        if data in g.input_names:
            warn(f"DequantizeLinear reads network input '{data}' directly (an INT8 network input)")
        return
    if producer.op_type != Q:
        err(f"DequantizeLinear reads the output of {producer.op_type} '{g.name(producer)}': TensorRT needs a "
            "QuantizeLinear (or constant quantized weights) before each DequantizeLinear")
        return
    q_scale = g.const(producer.input[1]) if len(producer.input) > 1 else None
    if scale is not None and q_scale is not None and (
            np.asarray(q_scale).shape != np.asarray(scale).shape
            or not np.allclose(np.asarray(q_scale, np.float64), np.asarray(scale, np.float64), rtol=1e-6, atol=0)):
        warn(f"scale differs from its QuantizeLinear '{g.name(producer)}': the pair requantizes instead of "
             "fusing into its neighbours")


def _check_weighted(g: GraphView, node: Any, report) -> None:
    if len(node.input) < 2:
        return

    def from_dq(tensor: str) -> bool:
        p = g.producer.get(tensor)
        return p is not None and p.op_type == DQ

    act_q, w_q = from_dq(node.input[0]), from_dq(node.input[1])
    if act_q and not w_q and g.is_const(node.input[1]):
        report.warning("qdq", g.name(node), node.op_type, f"{node.op_type}'s input is quantized but its weights are "
                       "not: TensorRT can run it in INT8 only when both are (it will run in float)")
    elif w_q and not act_q:
        report.warning("qdq", g.name(node), node.op_type, f"{node.op_type}'s weights are quantized but its input is "
                       "not: TensorRT runs it as weight-only quantization or in float")
