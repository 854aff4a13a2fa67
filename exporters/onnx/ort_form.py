"""The shared Q/DQ graph rewritten in the form ONNX Runtime's CPU kernels run fast.

The shared INT8 graph (:mod:`calibration.qdq`) has TensorRT's explicit-quantization form:
symmetric INT8 Q/DQ on the *inputs* of weighted operators only. TensorRT fuses that. ONNX
Runtime's CPU provider does not: its QDQ fusion turns ``DQ → Conv → Q`` into one
``QLinearConv`` only when the convolution's *output* is quantized too, and its x86 integer
kernels want unsigned 8-bit activations. Fed the TensorRT form, it dequantizes and runs a
float convolution, which is pure overhead. Measured on MobileNetV3-Large (batch 1, 2
threads, this machine): ONNX Runtime FP32 ≈ 4.9 ms, TensorRT-form Q/DQ ≈ 16 ms; this form
runs the convolutions as QLinearConv and the activations as QLinear* kernels (3.3 ms
against 3.7 ms FP32 in the same run, docs/calibration.md).

Same calibration, same decisions, a different encoding, written as an ordered list of passes
over a copy of the graph (:data:`PASSES`; each pass's count goes into the manifest's summary):

* weights: the shared graph's INT8 per-channel weights and corrected biases, unchanged;
* activations already quantized: the same threshold; tensors that never go negative on
  the calibration feeds (after ReLU/ReLU6) become UINT8 with zero point 0 and half the
  step (the same range with twice the resolution), the others UINT8 with zero point
  128 and the same step (numerically identical to the symmetric INT8 grid). The shared
  graph's own step with zero point 0 (its integers, clipped at 255 steps instead of 127) was
  0.3 dB closer to FP32 on pretrained EfficientNet-Lite0 but 3.4× slower (14.4 against
  4.2 ms): the Q's range then exceeds ReLU6's clip, ONNX Runtime keeps the Clip, and the
  convolution is not fused;
* outputs of quantized convolutions: a UINT8 Q/DQ pair with the min/max range the
  convolution's output takes on the calibration feeds, so ONNX Runtime can fuse it. Placed
  after a lone ReLU/Clip (ONNX Runtime folds that activation into the Q, and the range
  after it is the finer one); not added where the output already leads into a Q;
* HardSwish / SiLU outputs get such a pair too, and :mod:`exporters.onnx.ort_activations`
  rewrites the activations between convolutions so that they run on uint8 kernels;
* data movement (concat, channel shuffle, split, max-pool) moves uint8, one scale per
  Concat carried through its moves (:mod:`exporters.onnx.ort_movement`);
* a Gemm's float bias becomes int32 at input × weight scale, so the classifier runs as QGemm;
* average pools become depthwise convolutions (weights 1/k²), depthwise convolutions get zero
  channels up to a multiple of 16, and the RGB stem a fourth zero channel, so ONNX Runtime
  runs them on its fast symmetric kernels (same integers; :mod:`exporters.onnx.ort_channels`);
* a squeeze-excite gate is expanded to its input's size before the multiply, so ONNX
  Runtime runs that QLinearMul on all threads, not as a one-thread broadcast
  (:mod:`exporters.onnx.ort_gates`);
* layers the INT8 gate kept in float stay float, and a weighted layer ONNX Runtime runs in float
  (it does not fuse it into an integer kernel) reads its dequantized weight as a float constant,
  so that ONNX Runtime's NCHWc kernels take it (:mod:`exporters.onnx.ort_float`).

References: ONNX Runtime "Quantize ONNX models" (QDQ format, U8S8 on x86):
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgekit.feeds import take

from calibration import graph as g
from .ort_activations import integer_activations, swish_points
from .ort_channels import pad_depthwise_channels, pad_input_channels, pools_as_depthwise
from .ort_float import fold_float_weights, lone_activation
from .ort_gates import full_size_gates
from .ort_movement import (chain, concat_points, downstream_scale, fold_shuffles, pool_points,
                           read_dequantized, shuffle_to_gather)

U8_MAX = 255


@dataclass(frozen=True)
class Source:
    """What the passes read besides the graph they rewrite: the shared Q/DQ graph as it came
    (activation ranges are measured on it), the calibration feeds and the form's option."""

    model: object
    calib: Iterable[dict[str, np.ndarray]]
    max_feeds: int = 32
    linear_pairs: bool = True


@dataclass(frozen=True)
class Pass:
    """One rewrite of the copy, in order. ``run(model, source, index)`` returns the summary entry
    ``key`` (a count, or a dict of counts), or with ``entries`` a dict of summary entries.
    ``index`` is the one :class:`calibration.graph.GraphIndex` of the copy, fresh when the pass
    starts (the runner refreshes it after each pass)."""

    key: str
    run: Callable[[object, Source, g.GraphIndex], object]
    entries: bool = False


def to_ort_form(model, calib: Iterable[dict[str, np.ndarray]], max_feeds: int = 32,
                linear_pairs: bool = True) -> tuple[object, dict]:
    """A rewritten copy of the Q/DQ ``model`` and a summary of what changed: :data:`PASSES` in
    order. ``linear_pairs=False``: no pair on a convolution output without an activation (a
    residual branch's projection): those distributions are wide and heavy-tailed, and 256
    levels over their calibration min/max round and clip them most (pretrained
    EfficientNet-Lite0: the form 0.54 dB below the shared graph with them, 0.21 dB without;
    the nine projections then run as float convolutions)."""
    m = g.named_copy(model)
    source = Source(model, calib, max_feeds, linear_pairs)
    summary: dict = {}
    index = g.GraphIndex(m)
    for p in PASSES:
        out = p.run(m, source, index)
        index.refresh()
        summary.update(out if p.entries else {p.key: out})
    return m, summary


def quantization_points(m, src: Source, ix: g.GraphIndex | None = None) -> dict:
    """The activations' uint8 types, the new Q/DQ pairs after quantized convolutions, HardSwish /
    SiLU outputs and pools, and one scale per Concat carried through its moves."""
    graph = m.graph
    ix = ix or g.GraphIndex(m)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers

    act_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    qconvs = [n for n in graph.node if n.op_type == "Conv" and n.input[0] in prod
              and prod[n.input[0]].op_type == "DequantizeLinear"]
    graph_outputs = {o.name for o in graph.output}  # a graph output stays float
    conv_points = [p for p in (_output_point(n.output[0], cons) for n in qconvs)
                   if p is not None and p not in graph_outputs
                   and (src.linear_pairs or p not in {n.output[0] for n in qconvs})]
    new_points = conv_points + swish_points(graph, prod, cons, set(conv_points), graph_outputs)
    pools = pool_points(graph, prod, cons, set(new_points), graph_outputs)
    concats = concat_points(graph, prod, cons, set(new_points) | {o for o, _ in pools}, graph_outputs)
    feeds = take(src.calib, src.max_feeds)
    ranges = _ranges(src.model, [q.input[0] for q in act_q] + new_points + concats, feeds)

    unsigned, shifted = 0, 0
    for q in act_q:
        t, sname, zname = q.input[0], q.input[1], q.input[2]
        zp = g.to_array(inits[zname])
        if zp.dtype == np.uint8 and not zp.any() and zp.ndim == 0:
            unsigned += 1  # the shared graph already holds it as uint8 (a tensor that is never negative)
            continue
        if zp.dtype != np.int8 or zp.any() or zp.ndim != 0:
            continue  # not the shared graph's symmetric per-tensor form: leave it
        scale = float(g.to_array(inits[sname]))
        if ranges[t][0] >= 0:
            g.set_initializer(inits, sname, np.asarray(scale * 127 / U8_MAX, np.float32))
            g.set_initializer(inits, zname, np.asarray(0, np.uint8))
            unsigned += 1
        else:
            g.set_initializer(inits, zname, np.asarray(128, np.uint8))
            shifted += 1

    chains = {c: sorted(chain(c, cons) - {c} - graph_outputs) for c in concats}  # before any rewiring
    pairs = _Pairs(m, prod, cons)
    downstream = 0
    for t in new_points:
        reuse = downstream_scale(t, cons, inits)
        pairs.add(t, reuse or pairs.scale(t, ranges[t]))
        downstream += reuse is not None
    for out, src_t in pools:
        dq = prod.get(src_t)
        pairs.add(out, pairs.names[src_t] if src_t in pairs.names else (dq.input[1], dq.input[2]))
    moved, rescaled = 0, 0
    for c in concats:
        names = pairs.scale(c, ranges[c])
        pairs.add(c, names)
        for t in chains[c]:
            if g.quantized_by_all_users(t, cons):
                rescaled += pairs.share(cons[t], names)
            else:
                pairs.add(t, names)
                moved += 1
    pairs.place()
    return {"activation_qdq_unsigned_zero0": unsigned, "activation_qdq_unsigned_zero128": shifted,
            "conv_output_qdq_added": len(conv_points), "conv_output_downstream_scale": downstream,
            "activation_output_qdq_added": len(new_points) - len(conv_points),
            "pool_qdq_added": len(pools), "concat_qdq_added": len(concats), "movement_qdq_added": moved,
            "movement_qdq_rescaled": rescaled, "quantized_convs": len(qconvs), "range_feeds": len(feeds)}


class _Pairs:
    """New uint8 Q/DQ pairs: each goes right after the node that makes its tensor, and the
    tensor's users read the dequantized copy."""

    def __init__(self, model, prod, cons):
        self.model, self.prod, self.cons = model, prod, cons
        self.inits = g.initializers(model)
        self.after: dict[str, list] = {}
        self.names: dict[str, tuple[str, str]] = {}  # tensor → the (scale, zero point) of its pair

    def scale(self, t: str, rng: tuple[float, float]) -> tuple[str, str]:
        """New (scale, zero point) initializers covering ``rng`` and 0 on 256 levels."""
        nh = g.onnx_mod().numpy_helper
        lo, hi = min(rng[0], 0.0), max(rng[1], 0.0)
        scale = (hi - lo) / U8_MAX if hi > lo else 1.0
        zp = int(np.clip(round(-lo / scale), 0, U8_MAX))
        base = g.safe_name(t)
        sname, zname = f"{base}_ort_scale", f"{base}_ort_zero"
        new = [nh.from_array(np.asarray(scale, np.float32), sname), nh.from_array(np.asarray(zp, np.uint8), zname)]
        self.model.graph.initializer.extend(new)
        self.inits.update({sname: new[0], zname: new[1]})
        return sname, zname

    def add(self, t: str, names: tuple[str, str]) -> None:
        helper = g.onnx_mod().helper
        sname, zname = names
        self.names[t] = names
        base = g.safe_name(t)
        q, out = f"{base}_ort_quantized", f"{base}_ort_dequantized"
        for c in self.cons.get(t, []):
            for i, name in enumerate(c.input):
                if name == t:
                    c.input[i] = out
        self.after.setdefault(self.prod[t].name, []).extend([
            helper.make_node("QuantizeLinear", [t, sname, zname], [q], name=f"{base}_ort_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [q, sname, zname], [out], name=f"{base}_ort_DequantizeLinear")])

    def share(self, quantizers, names: tuple[str, str]) -> int:
        """Give existing Q nodes (and so their DQs) the values of ``names``."""
        for q in quantizers:
            for own, shared in zip(q.input[1:3], names):
                g.set_initializer(self.inits, own, g.to_array(self.inits[shared]))
        return len(quantizers)

    def place(self) -> None:
        graph = self.model.graph
        ordered = []
        for n in graph.node:
            ordered.append(n)
            ordered.extend(self.after.get(n.name, []))
        del graph.node[:]
        graph.node.extend(ordered)


def integer_gemm_bias(model, ix: g.GraphIndex | None = None) -> int:
    """Give each Gemm between a dequantized input and dequantized weights an int32 bias at
    scale input_scale × weight_scale (zero point 0), as ONNX Runtime's own quantizer writes
    it. With a float bias ONNX Runtime does not fuse the Gemm: it dequantizes the whole
    weight matrix on every run and multiplies in float (the 1000×1024 classifier of
    ShuffleNetV2, about 0.4 ms of 4); with the int32 bias it runs QGemm, with a float output
    when the Gemm makes the graph's output. The bias moves by at most half a step of
    input_scale × weight_scale, far below the INT8 steps around it. Returns how many."""
    nh, helper = g.onnx_mod().numpy_helper, g.onnx_mod().helper
    ix = ix or g.GraphIndex(model)
    inits, prod = ix.inits, ix.producer
    done = 0
    for n in list(model.graph.node):
        if n.op_type != "Gemm" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        x, w = prod.get(n.input[0]), prod.get(n.input[1])
        if not all(d is not None and d.op_type == "DequantizeLinear" and d.input[1] in inits for d in (x, w)):
            continue
        sx, sw = g.to_array(inits[x.input[1]]), g.to_array(inits[w.input[1]])
        bias = g.to_array(inits[n.input[2]]).astype(np.float64)
        if sx.ndim or bias.ndim != 1 or sw.size not in (1, bias.size) or g.attr(n, "beta", 1.0) != 1.0:
            continue
        scale = (float(sx) * sw.astype(np.float64)).reshape(-1)
        q = np.round(bias / scale).astype(np.int32)
        base = g.safe_name(n.input[2])
        names = [f"{base}_int32", f"{base}_int32_scale", f"{base}_int32_zero"]
        model.graph.initializer.extend([
            nh.from_array(q, names[0]),
            nh.from_array(scale.astype(np.float32) if sw.size > 1 else np.asarray(scale[0], np.float32), names[1]),
            nh.from_array(np.zeros_like(q) if sw.size > 1 else np.asarray(0, np.int32), names[2])])
        dq = helper.make_node("DequantizeLinear", names, [f"{base}_int32_dequantized"], axis=0,
                              name=f"{base}_int32_DequantizeLinear")
        n.input[2] = dq.output[0]
        model.graph.node.insert(list(model.graph.node).index(n), dq)
        done += 1
    return done


def _output_point(t: str, cons) -> str | None:
    """Where a quantized convolution's output ``t`` gets its uint8 Q/DQ pair: on ``t``, or
    after a lone ReLU/Clip (ONNX Runtime folds that activation into the Q and the
    convolution into QLinearConv); None when it already ends in a Q."""
    if g.quantized_by_all_users(t, cons):
        return None
    act = lone_activation(t, cons)
    if act is not None:
        after = act.output[0]
        if g.quantized_by_all_users(after, cons) or _feeds_float_layer(after, cons):
            return None
        return after
    return None if _feeds_float_layer(t, cons) else t


def _feeds_float_layer(t: str, cons) -> bool:
    """Whether a weighted layer reads ``t`` in float: one the INT8 gate kept in float (its input
    is not dequantized). A pair there would quantize, on min/max ranges, the very tensor the
    fallback chose to keep exact: on pretrained EfficientNet-Lite0 one such pair (in front of
    the second most sensitive layer) took the form from 24.8 to 14.4 dB against FP32."""
    return any(c.op_type in g.WEIGHTED_OPS and c.input and c.input[0] == t for c in cons.get(t, []))


def _ranges(model, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """(min, max) of each tensor over the calibration ``feeds``, read from the Q/DQ model
    itself (so each range includes the quantization upstream of it)."""
    names = sorted(set(tensors))
    sess = g.session(g.with_outputs(model, names))
    valid = {i.name for i in sess.get_inputs()}
    lo = {t: np.inf for t in names}
    hi = {t: -np.inf for t in names}
    if not feeds:
        raise ValueError("no calibration feeds to measure activation ranges on")
    for f in feeds:
        outs = sess.run(names, {k: v for k, v in f.items() if k in valid})
        for t, a in zip(names, outs):
            lo[t] = min(lo[t], float(a.min()))
            hi[t] = max(hi[t], float(a.max()))
    return {t: (lo[t], hi[t]) for t in names}


def build_ort_int8(src_path: Path, path: Path, calib, max_feeds: int = 32, linear_pairs: bool = True) -> dict:
    """Read the shared Q/DQ ONNX at ``src_path``, write the ONNX Runtime form to ``path``."""
    onnx = g.onnx_mod()
    model, summary = to_ort_form(g.load(src_path), calib, max_feeds, linear_pairs)
    summary["linear_pairs"] = linear_pairs
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return summary


# The ONNX Runtime form, pass by pass, in the order they run (each reads what the previous wrote).
PASSES: tuple[Pass, ...] = (
    Pass("channel_shuffles_folded", lambda m, src, ix: fold_shuffles(m, ix)),      # ort_movement
    Pass("channel_shuffles_to_gather", lambda m, src, ix: shuffle_to_gather(m, ix)),
    Pass("inputs_read_dequantized", lambda m, src, ix: read_dequantized(m, ix)),
    Pass("quantization_points", quantization_points, entries=True),                # types, pairs, concat scales
    Pass("integer_activations", lambda m, src, ix: integer_activations(m, ix)),    # ort_activations
    Pass("gemm_bias_int32", lambda m, src, ix: integer_gemm_bias(m, ix)),
    Pass("average_pools_as_depthwise", lambda m, src, ix: pools_as_depthwise(m, ix)),   # ort_channels
    Pass("depthwise_channel_sets_padded", lambda m, src, ix: pad_depthwise_channels(m, ix)),
    Pass("input_channels_padded", lambda m, src, ix: pad_input_channels(m, ix)),
    Pass("gates_full_size", lambda m, src, ix: full_size_gates(m, ix)),            # ort_gates: reads the padded shapes
    Pass("float_layers_constant_weights", lambda m, src, ix: fold_float_weights(m, ix)),   # ort_float: last
)
