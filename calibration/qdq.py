"""Write a Q/DQ ONNX graph in the form TensorRT's explicit quantization accepts.

Form (TensorRT "Working with Quantized Types" / "Explicit Quantization",
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html
and .../quantized-types-explicit-quantization.html):

* every zero point is 0; weights signed INT8 in [-127, 127]; activations signed INT8 in
  [-128, 127] (scale > 0). That is the form TensorRT accepts. For other runtimes a
  tensor that the graph proves never negative (a ReLU / ReLU6 / gate output, and what
  pools or reshapes it: :func:`calibration.graph.nonnegative_tensors`) may instead be
  ``uint8`` with zero point 0, listed in ``QdqPlan.unsigned``: the same threshold on 255
  steps instead of 127, which halves the rounding step of most activations of a ReLU
  network (ONNX Runtime's and NNCF's own choice for such tensors). A tensor with a proven
  floor below 0 (h-swish, SiLU: :mod:`calibration.bounds`) is ``uint8`` with the zero point
  that puts the floor on the grid (``QdqPlan.floors``). TensorRT exports calibrate with
  ``Int8Options(unsigned=False)``: every activation signed, zero point 0;
* weights pre-quantized: an INT8 initializer followed by a ``DequantizeLinear`` with
  per-channel scales on the output-channel axis (K = axis 0 for Conv; the output
  column axis for Gemm / MatMul);
* activations per tensor: one ``QuantizeLinear`` → ``DequantizeLinear`` pair on each
  input of a weighted operator (Conv, Gemm, MatMul) — TensorRT's recommendation is to
  quantize the inputs of weighted operations and let it fuse the rest;
* residual ``Add``: the skip input is read through the same Q/DQ pair as its other
  quantized consumers, so TensorRT can fuse the Add into the convolution that
  produces the other input (the "quantize the residual input" placement of the
  Q/DQ placement recommendations);
* biases and everything that is not a weighted operator stay float.

Nodes named in ``QdqPlan.float_nodes`` are left untouched (mixed precision).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit import ort_options

from . import graph as g
from . import methods
from .graph import QuantTarget

W_QMAX = 127
# On an x86 CPU without VNNI, oneDNN (inside OpenVINO) runs u8×s8 layers on vpmaddubsw: it adds the
# products of input channels 2j and 2j+1 (at the same kernel tap; K entries 2k, 2k+1 of a Gemm) in
# a saturating 16-bit lane. With activations up to 255, a pair is exact while |q[2j]| + |q[2j+1]|
# <= 128 (255 · 128 = 32640 <= 32767). On a [-127, 127] grid 2-24 % of the pairs of pretrained
# EfficientNet-Lite0's layers exceed that; [-63, 63] (ONNX Runtime's reduce_range, NNCF's overflow fix)
# never does but doubles every step. So each output channel's grid is chosen among PAIR_QMAX steps
# (paired_scales) and the pairs still over the budget are held to it (limit_pairs, layerwise.gptq_rows).
PAIR_BUDGET = ort_options.PAIR_BUDGET   # the one bound, kept where the sessions check it
PAIR_QMAX = (63, 71, 80, 90, 101, 113, 127)
INT8_SUFFIX = "_int8"  # a quantized weight initializer: f"{safe weight name}{INT8_SUFFIX}"


@dataclass
class QdqPlan:
    targets: list[QuantTarget]
    act_scales: dict[str, float]                   # activation tensor -> scale
    float_nodes: set[str] = field(default_factory=set)
    weights: dict[str, np.ndarray] = field(default_factory=dict)   # replaced float weights (e.g. equalized)
    biases: dict[str, np.ndarray] = field(default_factory=dict)    # node name -> corrected bias
    bias_on_accumulator_grid: bool = True   # see on_accumulator_grid
    weight_clip: dict[str, np.ndarray] = field(default_factory=dict)  # weight name -> per-channel threshold
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)  # weight name -> fixed per-channel scales
    residual: bool = True
    per_channel: bool = True   # False: one scale per weight tensor (a naive baseline)
    unsigned: set[str] = field(default_factory=set)  # activations held as uint8 (zero point 0, or see floors)
    floors: dict[str, float] = field(default_factory=dict)  # uint8 tensors with a proven floor < 0 (bounds.py)
    add_inputs: set[str] = field(default_factory=set)  # also quantized where an Add reads them (quantize.add_inputs)
    weight_pairs: dict[str, int] = field(default_factory=dict)  # weight name -> its paired axis (PAIR_BUDGET)

    def quantized(self) -> list[QuantTarget]:
        return [t for t in self.targets if t.node not in self.float_nodes]

    def layer_counts(self) -> dict[str, Any]:
        """Weighted layers and convolutions, all and INT8 (the quantize meta's ``layers``)."""
        convs = [t for t in self.targets if t.op in ("Conv", "ConvTranspose")]
        float_convs = sum(t.node in self.float_nodes for t in convs)
        return {"weighted": len(self.targets), "int8": len(self.targets) - len(self.float_nodes),
                "convs": len(convs), "int8_convs": len(convs) - float_convs,
                "int8_conv_fraction": round(1 - float_convs / len(convs), 4) if convs else None}

    def activation_lists(self) -> dict[str, Any]:
        """The manifest's ``activation_floors`` and ``unsigned_activations``: of the activations the
        INT8 layers of this float set read."""
        read = {t.activation for t in self.quantized()}
        return {"activation_floors": {t: {"floor": round(f, 6), "zero_point": self.zero_point(t)}
                                      for t, f in sorted(self.floors.items()) if t in read},
                "unsigned_activations": sorted(self.unsigned & read)}

    def zero_point(self, tensor: str) -> int:
        """The uint8 zero point of an activation (0 unless it has a floor below 0)."""
        return methods.zero_point(self.act_scales[tensor], self.floors.get(tensor, 0.0)) if tensor in self.unsigned else 0


def paired_weights(model, targets: list[QuantTarget]) -> dict[str, int]:
    """weight name -> the axis whose neighbouring entries u8×s8 kernels pair (:data:`PAIR_BUDGET`): the
    input channels of every Conv with two or more of them per group (a stem's three included; measured
    on OpenVINO 2026.4, tests/calibration/test_paired_weights.py), the K axis of a Gemm or MatMul.
    Depthwise convolutions (one input channel per group) run on 32-bit products and are left out."""
    inits = g.initializers(model)
    out = {}
    for t in targets:
        if t.op != "Conv" or (t.weight in inits and len(inits[t.weight].dims) > 1 and inits[t.weight].dims[1] > 1):
            out[t.weight] = 1 - t.axis   # Conv (O, I, kh, kw) and Gemm transB (N, K): 1; (K, N): 0
    return out


def limit_pairs(q: np.ndarray, w: np.ndarray, axis: int, budget: int = PAIR_BUDGET) -> np.ndarray:
    """``q`` (integers) with every pair of neighbours (2j, 2j+1) along ``axis`` held to |a| + |b| <= ``budget``:
    an over-budget pair gets the two magnitudes summing to ``budget`` closest to ``w`` (the weights in grid
    steps): |a| = (budget + |w_a| - |w_b|) / 2, rounded, signs kept."""
    n = q.shape[axis] // 2 * 2
    out = np.moveaxis(np.array(q, np.int32), axis, 0)
    wm = np.moveaxis(np.asarray(w, np.float64), axis, 0)
    a, b = out[0:n:2], out[1:n:2]
    over = np.abs(a) + np.abs(b) > budget
    if over.any():
        ma = np.clip(np.rint((budget + np.abs(wm[0:n:2]) - np.abs(wm[1:n:2])) / 2), budget - W_QMAX, W_QMAX)
        out[0:n:2] = np.where(over, np.sign(wm[0:n:2]) * ma, a)
        out[1:n:2] = np.where(over, np.sign(wm[1:n:2]) * (budget - ma), b)
    return np.moveaxis(out, 0, axis)


def paired_scales(w: np.ndarray, axis: int, pair_axis: int, clip: np.ndarray | None = None) -> np.ndarray:
    """Per-channel scales max|w| / m, m in :data:`PAIR_QMAX`, each channel's m the one whose rounding with
    :func:`limit_pairs` is closest to the weights (squared error)."""
    amax = weight_scales(w, axis, clip) * W_QMAX
    view = _view(w.ndim, axis)
    red = tuple(i for i in range(w.ndim) if i != axis)
    best_err, best = None, None
    for m in PAIR_QMAX:
        s = (amax / m).astype(np.float32)
        grid = w / s.reshape(view)
        q = limit_pairs(np.clip(np.rint(grid), -W_QMAX, W_QMAX), grid, pair_axis)
        err = ((q * s.reshape(view) - w).astype(np.float64) ** 2).sum(axis=red)
        if best is None:
            best_err, best = err, s
        else:
            better = err < best_err
            best_err, best = np.where(better, err, best_err), np.where(better, s, best)
    return best.astype(np.float32)


def weight_scales(w: np.ndarray, axis: int, clip: np.ndarray | None = None) -> np.ndarray:
    """Per-channel symmetric scales (max |w| of each output channel / 127); ``axis=None``:
    one scale for the whole tensor."""
    if axis is None:
        s = float(np.abs(w).max()) / W_QMAX
        return np.asarray(s if s > 0 else 1.0, np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    if clip is not None:
        amax = np.minimum(amax, clip)
    s = amax.astype(np.float64) / W_QMAX
    return np.where(s > 0, s, 1.0).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, clip: np.ndarray | None = None,
                    scales: np.ndarray | None = None, pair_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, per-channel scales); ``pair_axis``: its neighbours held to :data:`PAIR_BUDGET`."""
    s = weight_scales(w, axis, clip) if scales is None else np.asarray(scales, np.float32)
    view = _view(w.ndim, axis)
    grid = w / s.reshape(view)
    q = np.clip(np.rint(grid), -W_QMAX, W_QMAX)
    if pair_axis is not None:
        q = limit_pairs(q, grid, pair_axis)
    return q.astype(np.int8), s


def fake_quant_weight(w: np.ndarray, axis: int | None, clip: np.ndarray | None = None) -> np.ndarray:
    q, s = quantize_weight(w, axis, clip)
    return q.astype(np.float32) * s.reshape(_view(w.ndim, axis))


def _view(ndim: int, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return ()
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def build(model, plan: QdqPlan):
    """A new ModelProto with Q/DQ nodes inserted according to ``plan``."""
    onnx = g.onnx_mod()
    helper, nh = onnx.helper, onnx.numpy_helper
    m = g.named_copy(model)
    graph = m.graph
    inits = g.initializers(m)
    by_name = {n.name: n for n in graph.node}
    prod = g.producers(m)
    new_inits, new_nodes = [], {}  # new_nodes: anchor tensor -> nodes to insert before its first consumer
    act_dq: dict[str, str] = {}
    w_dq: dict[str, str] = {}
    w_scale: dict[str, np.ndarray] = {}  # weight name -> its per-channel scales

    def act_qdq(t: str) -> str:
        if t in act_dq:
            return act_dq[t]
        base = g.safe_name(t)
        sname, zname = f"{base}_qscale", f"{base}_qzero"
        zdtype = np.uint8 if t in plan.unsigned else np.int8
        new_inits.extend([nh.from_array(np.asarray(plan.act_scales[t], np.float32), sname),
                          nh.from_array(np.asarray(plan.zero_point(t), zdtype), zname)])
        q = helper.make_node("QuantizeLinear", [t, sname, zname], [f"{base}_quantized"], name=f"{base}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", sname, zname], [dequantized_name(t)],
                              name=f"{base}_DequantizeLinear")
        new_nodes.setdefault(t, []).extend([q, dq])
        act_dq[t] = dequantized_name(t)
        return act_dq[t]

    for t in plan.quantized():
        node = by_name[t.node]
        if t.activation not in plan.act_scales:
            continue
        node.input[0] = act_qdq(t.activation)
        if t.weight not in w_dq:
            w = plan.weights.get(t.weight)
            w = g.to_array(inits[t.weight]) if w is None else w
            axis = t.axis if plan.per_channel else None
            q, s = quantize_weight(w, axis, plan.weight_clip.get(t.weight), plan.weight_scales.get(t.weight),
                                   plan.weight_pairs.get(t.weight))
            base = g.safe_name(t.weight)
            zp = np.zeros_like(s, dtype=np.int8)
            new_inits += [nh.from_array(q, f"{base}{INT8_SUFFIX}"), nh.from_array(s, f"{base}_wscale"),
                          nh.from_array(zp, f"{base}_wzero")]
            dq = helper.make_node("DequantizeLinear", [f"{base}{INT8_SUFFIX}", f"{base}_wscale", f"{base}_wzero"],
                                  [f"{base}_dequantized"], name=f"{base}_DequantizeLinear",
                                  **({"axis": axis} if axis is not None else {}))
            new_nodes.setdefault(f"__weights__{t.node}", []).append(dq)
            w_dq[t.weight], w_scale[t.weight] = f"{base}_dequantized", s
        widx = g.WEIGHTED_OPS[node.op_type]
        node.input[widx] = w_dq[t.weight]
        if len(node.input) > 2 and node.input[2] in inits and plan.bias_on_accumulator_grid:
            bias = plan.biases.get(t.node)
            bias = g.to_array(inits[node.input[2]]) if bias is None else bias
            bname = f"{g.safe_name(node.input[2])}_corrected"
            new_inits.append(nh.from_array(on_accumulator_grid(bias, plan.act_scales[t.activation],
                                                               w_scale[t.weight]), bname))
            node.input[2] = bname
        elif t.node in plan.biases and len(node.input) > 2 and node.input[2] in inits:
            bname = f"{g.safe_name(node.input[2])}_corrected"
            new_inits.append(nh.from_array(plan.biases[t.node].astype(np.float32), bname))
            node.input[2] = bname

    if plan.residual:
        quantized_nodes = {t.node for t in plan.quantized()}
        for node in graph.node:
            if node.op_type != "Add" or len(node.input) != 2:
                continue
            a, b = node.input
            pa, pb = prod.get(a), prod.get(b)
            # the skip input is quantized when the other input comes from a quantized conv
            if a in act_dq and pb is not None and pb.name in quantized_nodes:
                node.input[0] = act_dq[a]
            elif b in act_dq and pa is not None and pa.name in quantized_nodes:
                node.input[1] = act_dq[b]

    for node in graph.node:  # ExecuTorch's points: a layer's output quantized where its residual Add reads it
        if node.op_type == "Add" and plan.add_inputs:
            for i, t in enumerate(node.input):
                if t in plan.add_inputs and t in plan.act_scales:
                    node.input[i] = act_qdq(t)

    # rebuild the node list: weight DQs first, activation Q/DQs right after their producer
    ordered = [n for k, v in new_nodes.items() if k.startswith("__weights__") for n in v]
    graph_inputs = {i.name for i in graph.input}
    for t, nodes in new_nodes.items():
        if not t.startswith("__weights__") and (t in graph_inputs or t in inits):
            ordered.extend(nodes)
    for n in graph.node:
        ordered.append(n)
        for o in n.output:
            if o in new_nodes:
                ordered.extend(new_nodes[o])
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + [t for t in new_inits if t.name in used])
    return m


def on_accumulator_grid(bias: np.ndarray, act_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """``bias`` rounded to a multiple of input scale × weight scale (per output channel): the
    value an integer kernel that adds the bias to its int32 accumulator holds. OpenVINO's
    fused int8 convolution does (an INT8 model's biases on ONNX Runtime's float path and on
    OpenVINO then differ by up to half that step, which flips values near each rounding
    boundary and compounds through the network: pretrained EfficientNet-Lite0, OpenVINO
    against ONNX Runtime on the same graph, 29.1 dB with float biases, 30.8 dB on this grid,
    at a cost of 0.1 dB against FP32); so do ONNX Runtime's QLinearConv/QGemm (an int32 bias
    input) and TensorRT's INT8 kernels. On the grid, every runtime adds the same bias."""
    step = float(act_scale) * np.asarray(weight_scale, np.float64).reshape(-1)
    b = np.asarray(bias, np.float64)
    return (np.round(b / step) * step).astype(np.float32)


def dequantized_name(tensor: str) -> str:
    """Name of the DequantizeLinear output that feeds quantized consumers of ``tensor``."""
    return f"{g.safe_name(tensor)}_dequantized"

