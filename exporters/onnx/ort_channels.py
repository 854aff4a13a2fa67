"""Depthwise convolutions padded to a multiple of 16 channels for ONNX Runtime's fast kernel.

ONNX Runtime's x86 QLinearConv runs a depthwise convolution on its fast symmetric kernel
(``MlasConvSymDepthwise*``, per-channel int8 weights with zero point 0, as edgekit writes
them) only when the channel count is a multiple of 16; any other count falls back to a
generic kernel (``MlasConvSymPackWSize`` in onnxruntime/core/mlas/lib/convsym.cpp returns 0
and QLinearConv takes its slow path). Profiled on MobileNetV3-Large (2 threads, batch 1):
its 72- and 120-channel depthwise convolutions ran 3.5–4.5× slower in INT8 than in float
(0.24 against 0.056 ms for a 120-channel 5×5), while the 480- to 960-channel ones ran at
float speed. ONNX Runtime's float kernels pad channels to the SIMD block themselves (the
float profile shows 80 where the model has 72), so the INT8 form pads them too:

* the depthwise convolution gets zero filters for the new channels;
* the convolutions that write its channels (the expansion 1×1, the squeeze-excite FC that
  makes the gate) get zero output rows, zero bias;
* the convolutions that read them (the projection 1×1, the squeeze-excite FC after the
  pooling) get zero input columns;
* everything in between is per-channel or per-tensor (Q/DQ with one scale, ReLU, the
  hard-swish Add/Mul, global average pooling, the gate Mul), so it carries the new
  channels along without touching the real ones.

A padded channel is only ever read with a zero weight, so the output is bit-exact; the test
compares it integer for integer. A channel set is padded only when every node that touches
it is one of those kinds, and when padding grows it by at most a third.

The same kernel family wants a full convolution's input channels in multiples of 4
(``KernelInputChannelAlignment``): the RGB stem (3 channels) ran 0.53 ms on the generic path
and 0.25 ms padded to 4, for a 0.04 ms uint8 ``Pad`` of the image (:func:`pad_input_channels`).

An average pool between DQ and Q runs as ONNX Runtime's QLinearAveragePool, which is slow: a
3×3 stride-2 pool of a 28×28×240 uint8 tensor took 0.85 ms, the same pool as a depthwise
QLinearConv with every weight 1/9 took 0.17 ms with the same integers out
(:func:`pools_as_depthwise`, for windows with an odd number of taps; ShuffleNetV1's stride-2
shortcuts).
"""
from __future__ import annotations

import numpy as np

from calibration import graph as g

ALIGN = 16
INPUT_ALIGN = 4
MAX_GROWTH = 4 / 3
PER_CHANNEL = ("QuantizeLinear", "DequantizeLinear", "Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid",
               "GlobalAveragePool", "AveragePool", "MaxPool")
ELEMENTWISE = ("Add", "Mul")


class _Abort(Exception):
    """A node touches the channel set in a way padding cannot follow."""


def pad_depthwise_channels(model, ix: g.GraphIndex | None = None) -> int:
    """Pad, in place, each depthwise convolution whose channel count is not a multiple of 16
    (with the convolutions around it). Returns how many channel sets were padded."""
    ix = ix or g.GraphIndex(model)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers
    outputs = {o.name for o in model.graph.output}
    done, seen = 0, set()
    for n in list(model.graph.node):
        c = _depthwise_channels(n, inits, prod)
        if c is None or c % ALIGN == 0 or n.name in seen:
            continue
        padded = -(-c // ALIGN) * ALIGN
        try:
            tensors, pad_out, pad_in, inner = _channel_set(n, c, inits, prod, cons, outputs)
        except _Abort:
            continue
        seen.update(x.name for x in inner)
        if padded > MAX_GROWTH * c:
            continue
        for conv in pad_out:
            _pad_weight(conv, 0, padded, inits, prod)
        for conv in pad_in:
            _pad_weight(conv, 1, padded, inits, prod)
        for conv in inner:
            _pad_weight(conv, 0, padded, inits, prod)
            g.set_int_attr(conv, "group", padded)
        _forget_shapes(model, tensors)
        done += 1
    return done


def pad_input_channels(model, ix: g.GraphIndex | None = None) -> int:
    """Pad, in place, the input channels of each full convolution that reads a quantized graph
    input (``DQ(Q(image))``) with a channel count not a multiple of 4 (the RGB stem): a uint8
    ``Pad`` at the zero point between the Q and the DQ (it dequantizes to exactly 0) and zero
    weight columns. Returns how many."""
    nh, helper = g.onnx_mod().numpy_helper, g.onnx_mod().helper
    ix = ix or g.GraphIndex(model)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers
    images = {i.name for i in model.graph.input}
    done = 0
    for conv in list(model.graph.node):
        w = _weight(conv, inits, prod) if conv.op_type == "Conv" else None
        if w is None or g.attr(conv, "group", 1) != 1 or len(w.dims) != 4 or w.dims[1] % INPUT_ALIGN == 0:
            continue
        dq = prod.get(conv.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in images or len(q.input) < 3 \
                or len(cons[q.output[0]]) != 1 or len(cons[dq.output[0]]) != 1:
            continue
        padded = -(-w.dims[1] // INPUT_ALIGN) * INPUT_ALIGN
        base = g.safe_name(conv.input[0])
        pads, out = f"{base}_channel_pads", f"{base}_channel_padded"
        model.graph.initializer.append(nh.from_array(
            np.array([0, 0, 0, 0, 0, padded - w.dims[1], 0, 0], np.int64), pads))
        pad = helper.make_node("Pad", [q.output[0], pads, q.input[2]], [out], name=f"{base}_channel_Pad")
        dq.input[0] = out
        model.graph.node.insert(list(model.graph.node).index(dq), pad)
        _pad_weight(conv, 1, padded, inits, prod)
        _forget_shapes(model, {dq.output[0]})
        done += 1
    return done


def pools_as_depthwise(model, ix: g.GraphIndex | None = None) -> int:
    """Rewrite, in place, each 2-D ``AveragePool`` between a per-tensor DQ and Q on the same
    scale (padding counted in the average, or no padding) whose window has an odd number of
    taps as a depthwise ``Conv`` whose int8 weights are all 127 at scale 1 / (127 · k_h · k_w):
    the same sum and divisor. An integer sum over an odd divisor is never a rounding tie, so
    the integers out are the same; an even window (DenseNet's 2×2) can land on ties the two
    kernels round differently, and stays a pool. Returns how many."""
    nh, helper = g.onnx_mod().numpy_helper, g.onnx_mod().helper
    ix = ix or g.GraphIndex(model)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers
    channels = {t: d[1] for t, d in g.inferred_dims(model).items() if len(d) == 4 and d[1] > 0}
    done = 0
    for pool in list(model.graph.node):
        if pool.op_type != "AveragePool" or pool.input[0] not in channels:
            continue
        kernel, pads = g.attr(pool, "kernel_shape", []), g.attr(pool, "pads", [0, 0, 0, 0])
        dq, users = prod.get(pool.input[0]), cons.get(pool.output[0], [])
        if len(kernel) != 2 or g.attr(pool, "ceil_mode", 0) or g.attr(pool, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
                or (any(pads) and not g.attr(pool, "count_include_pad", 0)) or g.attr(pool, "dilations", None):
            continue
        if kernel[0] * kernel[1] % 2 == 0 or dq is None or not g.per_tensor(dq, "DequantizeLinear", inits) \
                or not users or not all(_same_step(u, dq, inits) for u in users):
            continue
        c = channels[pool.input[0]]
        base = g.safe_name(pool.name)
        names = [f"{base}_weight", f"{base}_weight_scale", f"{base}_weight_zero"]
        model.graph.initializer.extend([
            nh.from_array(np.full((c, 1, *kernel), 127, np.int8), names[0]),
            nh.from_array(np.full(c, 1 / (127 * kernel[0] * kernel[1]), np.float32), names[1]),
            nh.from_array(np.zeros(c, np.int8), names[2])])
        wdq = helper.make_node("DequantizeLinear", names, [f"{base}_weight_dequantized"], axis=0, name=f"{base}_weight_DQ")
        conv = helper.make_node("Conv", [pool.input[0], wdq.output[0]], list(pool.output), name=f"{base}_as_depthwise",
                                group=c, kernel_shape=kernel, pads=pads, strides=g.attr(pool, "strides", [1, 1]))
        at = list(model.graph.node).index(pool)
        model.graph.node.remove(pool)
        model.graph.node.insert(at, conv)
        model.graph.node.insert(at, wdq)
        done += 1
    return done


def _same_step(q, dq, inits) -> bool:
    """``q`` is a per-tensor QuantizeLinear with the same scale and zero point as ``dq``."""
    return g.per_tensor(q, "QuantizeLinear", inits) and all(
        np.array_equal(g.to_array(inits[a]), g.to_array(inits[b])) for a, b in zip(q.input[1:3], dq.input[1:3]))


def _depthwise_channels(n, inits, prod) -> int | None:
    """C for a depthwise Conv (group = C, one input channel per filter) on constant weights."""
    if n.op_type != "Conv":
        return None
    w = _weight(n, inits, prod)
    group = g.attr(n, "group", 1)
    if w is None or group == 1 or w.dims[0] != group or w.dims[1] != 1:
        return None
    return group


def _weight(conv, inits, prod):
    """The initializer behind a Conv's weight (directly or through one DequantizeLinear)."""
    w = conv.input[1]
    if w in inits:
        return inits[w]
    dq = prod.get(w)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        return inits[dq.input[0]]
    return None


def _channel_set(start, c: int, inits, prod, cons, outputs: set[str]):
    """The activation tensors that carry ``start``'s ``c`` channels, found by walking from its
    input and output across per-channel nodes; with the convolutions that write them
    (``pad_out``), read them (``pad_in``) and are depthwise inside them (``inner``)."""
    tensors: set[str] = set()
    pad_out, pad_in, inner = {}, {}, {start.name: start}
    todo = [start.input[0], start.output[0]]
    while todo:
        t = todo.pop()
        if t in tensors:
            continue
        tensors.add(t)
        p = prod.get(t)
        if p is None:
            raise _Abort(t)  # a graph input
        todo += _from_producer(p, c, inits, prod, pad_out, inner)
        users = cons.get(t, [])
        if not users or t in outputs:
            raise _Abort(t)  # a graph output keeps its shape
        for u in users:
            todo += _from_user(u, t, c, inits, prod, pad_in, inner)
    return tensors, list(pad_out.values()), list(pad_in.values()), list(inner.values())


def _from_producer(p, c, inits, prod, pad_out, inner) -> list[str]:
    if p.op_type == "Conv":
        return _edge_conv(p, c, inits, prod, pad_out, inner, onward=p.input[0])
    return _through(p, inits, prod)


def _from_user(u, t, c, inits, prod, pad_in, inner) -> list[str]:
    if u.op_type == "Conv" and u.input[0] == t:
        return _edge_conv(u, c, inits, prod, pad_in, inner, onward=u.output[0])
    return _through(u, inits, prod) + [u.output[0]]


def _edge_conv(conv, c, inits, prod, boundary, inner, onward: str) -> list[str]:
    """A Conv that writes or reads the set: depthwise over the same ``c`` channels (inside the
    set; the walk goes on to ``onward``), or a full convolution on constant weights (its weight
    gets padded: recorded in ``boundary``); any other convolution stops the padding."""
    if _depthwise_channels(conv, inits, prod) == c:
        inner[conv.name] = conv
        return [onward]
    if g.attr(conv, "group", 1) == 1 and _weight(conv, inits, prod) is not None:
        boundary[conv.name] = conv
        return []
    raise _Abort(conv.name)


def _through(n, inits, prod) -> list[str]:
    """The activation inputs of a per-channel node, or _Abort."""
    if n.op_type in PER_CHANNEL:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not g.per_tensor(n, n.op_type, inits):
            raise _Abort(n.name)  # per-channel scales would need padding too
        return [n.input[0]]
    if n.op_type in ELEMENTWISE:
        return [x for x in n.input if not _scalar_constant(x, inits, prod)]
    raise _Abort(n.name)


def _scalar_constant(x: str, inits, prod) -> bool:
    if x in inits:
        return g.to_array(inits[x]).size == 1
    p = prod.get(x)
    return p is not None and p.op_type == "DequantizeLinear" and all(i in inits for i in p.input) \
        and g.to_array(inits[p.input[0]]).size == 1


def _pad_weight(conv, axis: int, size: int, inits, prod) -> None:
    """Zero-pad a Conv's weight along ``axis`` to ``size``; on the output axis also its
    per-channel scale (with ones), zero point and bias (with zeros)."""
    w = conv.input[1]
    dq = None if w in inits else prod[w]
    _pad(inits, dq.input[0] if dq is not None else w, axis, size, 0)
    if axis != 0:
        return
    if dq is not None:
        _pad_vectors(dq, ((1, 1), (2, 0)), size, inits)
    b = conv.input[2] if len(conv.input) > 2 else ""
    if b in inits:
        _pad(inits, b, 0, size, 0)
    elif b:  # an int32 bias behind its own DequantizeLinear
        _pad_vectors(prod[b], ((0, 0), (1, 1), (2, 0)), size, inits)


def _pad_vectors(dq, fills, size: int, inits) -> None:
    """Pad the per-channel (1-D) inputs of ``dq`` to ``size``: input ``i`` with ``fill``."""
    for i, fill in fills:
        if len(dq.input) > i and g.to_array(inits[dq.input[i]]).ndim == 1:
            _pad(inits, dq.input[i], 0, size, fill)


def _pad(inits, name: str, axis: int, size: int, fill) -> None:
    a = g.to_array(inits[name])
    if a.shape[axis] == size:
        return  # shared with a node padded already
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    g.set_initializer(inits, name, np.pad(a, widths, constant_values=np.asarray(fill, a.dtype)))


def _forget_shapes(model, tensors: set[str]) -> None:
    """Drop the stale shape annotations of the padded tensors."""
    keep = [v for v in model.graph.value_info if v.name not in tensors]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
