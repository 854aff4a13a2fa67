"""Layers ONNX Runtime runs in float get their weights as float constants.

A weighted layer of the ONNX Runtime form that ONNX Runtime does not fuse into an integer kernel
still reads its weight through ``DequantizeLinear`` (the shared graph's INT8 weight): a depthwise
convolution whose output feeds a layer the INT8 gate kept in float, a projection of the
``ort_float_projections`` form, a convolution reading a float tensor. ONNX Runtime then runs it
as a float ``Conv`` whose weight is not a constant, and its CPU provider's NCHWc layout transformer
only takes convolutions with constant weights: the layer falls back to the generic kernel, which
for a depthwise convolution runs group by group. Profiled on this project's AMD EPYC (2 threads,
ONNX Runtime 1.32, 2026-12-07): pretrained EfficientNet-Lite0's stride-2 depthwise
``features.2.0.block.1`` took 1,162 µs that way, against 198 µs with the same weights as a float
constant; the whole ``ort`` form went from 1.02× to 1.18× ONNX Runtime FP32 in one interleaved run.

This pass computes ``(q - zero_point) · scale`` once, in float32 as ``DequantizeLinear`` does, and
stores it as the layer's weight: the same numbers. Layers ONNX Runtime fuses are left alone: a
``Conv`` between a dequantized input and a quantized output (after a lone ReLU/Clip, which ONNX
Runtime folds into the quantizer), and a ``Gemm``/``MatMul`` reading a dequantized input (QGemm,
MatMulIntegerToFloat). ONNX Runtime's layout transformer: ``onnxruntime/core/optimizer/
nchwc_transformer.cc`` (``TransformConv`` requires a constant weight initializer).
"""
from __future__ import annotations

import numpy as np

from calibration import graph as g

FUSABLE_ACTIVATIONS = ("Relu", "Clip")   # ONNX Runtime folds them into the Q that follows


def lone_activation(t: str, cons):
    """The ReLU/Clip that is the only reader of ``t``, or None: ONNX Runtime folds it into a Q after
    it, so a convolution making ``t`` fuses with that Q (exporters.onnx.ort_form places its pairs
    there)."""
    users = cons.get(t, [])
    return users[0] if len(users) == 1 and users[0].op_type in FUSABLE_ACTIVATIONS else None


def fold_float_weights(model, ix: g.GraphIndex | None = None) -> int:
    """Give every weighted layer ONNX Runtime runs in float a float constant weight; returns how
    many. The INT8 weight and its scale go when nothing else reads them (hygiene prunes them)."""
    nh = g.onnx_mod().numpy_helper
    ix = ix or g.GraphIndex(model)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers
    made: dict[str, str] = {}
    done = 0
    for n in model.graph.node:
        if n.op_type not in g.WEIGHTED_OPS or len(n.input) < 2 or _integer_kernel(n, prod, cons):
            continue
        dq = prod.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input if i) \
                or g.attr(dq, "block_size", 0):   # blocked scales (opset 21): not what calibration writes
            continue
        if n.input[1] not in made:
            made[n.input[1]] = name = f"{g.safe_name(n.input[1])}_float"
            model.graph.initializer.append(nh.from_array(dequantized(dq, inits), name))
        n.input[1] = made[n.input[1]]
        done += 1
    return done


def dequantized(dq, inits) -> np.ndarray:
    """What ``dq`` (a DequantizeLinear of initializers) computes, in float32."""
    q = g.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = g.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = g.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else None
    shape = [1] * q.ndim
    if scale.ndim:  # per-channel along ``axis``
        shape[g.attr(dq, "axis", 1) % q.ndim] = -1
    if zero is not None:
        q = q - zero.reshape(shape)
    return (q * scale.reshape(shape)).astype(np.float32)


def _integer_kernel(n, prod, cons) -> bool:
    """Whether ONNX Runtime's QDQ fusion runs ``n`` on an integer kernel."""
    x = prod.get(n.input[0])
    if x is None or x.op_type != "DequantizeLinear":
        return False
    if n.op_type != "Conv":
        return True  # Gemm → QGemm, MatMul → MatMulIntegerToFloat: a float output is fine
    out = n.output[0]
    act = lone_activation(out, cons)
    return g.quantized_by_all_users(out, cons) or (act is not None and g.quantized_by_all_users(act.output[0], cons))
