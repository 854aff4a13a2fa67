"""Data movement between ONNX Runtime's uint8 kernels: concat, channel shuffle, split, pooling.

In the ONNX Runtime form (:mod:`exporters.onnx.ort_form`) every convolution runs as a uint8
QLinearConv, but the tensors *between* convolutions that only move data stayed float in
ShuffleNetV2: each block's ``Concat → Reshape → Transpose → Reshape → Split`` (the channel
shuffle) ran on dequantized floats, with a Q and a DQ on either side and ONNX Runtime's
NCHW↔NHWC transposes around each of them. Profiled on ShuffleNetV2 x1.0 (2 threads,
batch 1): 55 Transposes 1.24 ms, 24 DQ 1.09 ms, 20 Q 0.49 ms, against 3.2 ms for all 56
QLinearConv, and the INT8 model ran 1.2× *slower* than FP32.

The rewrites, each exact or on a step the graph already uses:

* :func:`fold_shuffles`: a shuffle between a convolution and a depthwise one (ShuffleNetV1)
  moves into the weights: exact, and no shuffle is left.
* :func:`shuffle_to_gather`: any other channel shuffle ``Reshape(N, G, C/G, H, W) →
  Transpose(0, 2, 1, 3, 4) → Reshape(N, C, H, W)``, and the Split after it, become one
  ``Gather`` on the channel axis per output, with the shuffle's permutation as constant
  indices. Same values, one pass instead of three, and ONNX Runtime runs a Gather between DQ
  and Q on the integers.
* :func:`read_dequantized`: an Add, Concat or pool that reads a float tensor the graph also
  quantizes reads the quantized copy, so ONNX Runtime can fuse it.
* :func:`concat_points` and :func:`chain`: a ``Concat`` whose inputs are all dequantized gets a
  uint8 Q/DQ pair on its output (ONNX Runtime fuses it to QLinearConcat), and that pair's
  scale is carried through the data-movement operators after it (Gather, Reshape, Transpose,
  Split, Flatten, Squeeze, Unsqueeze), so ONNX Runtime drops each ``DQ → op → Q`` and moves
  the integers. An existing Q at the end of such a chain takes the chain's scale. Moving
  data does not change a tensor's range, so one scale, measured on the Concat's output, holds.
* :func:`pool_points`: a pool on a dequantized input keeps that input's scale on its output.
* :func:`downstream_scale`: a max-pool or a data move commutes with a monotone quantizer, so
  the tensor going into a quantized ``MaxPool`` (or a lone data move) is quantized with that
  operator's output scale; ONNX Runtime then runs it on uint8 (NhwcMaxPool, Gather) instead
  of DQ → float op → Q.

ONNX Runtime's QDQ rules (which DQ → op → Q groups it drops or fuses: Gather, Reshape,
Transpose, Split, MaxPool with equal scales; Concat to QLinearConcat):
onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
"""
from __future__ import annotations

import numpy as np

from calibration import graph as g
from edgekit.ort_options import pairs_fit

MOVERS = ("Gather", "Reshape", "Transpose", "Split", "Flatten", "Squeeze", "Unsqueeze")
SHUFFLE_PERM = [0, 2, 1, 3, 4]


def shuffle_to_gather(model, ix: g.GraphIndex | None = None) -> int:
    """Rewrite, in place, each channel shuffle (and an equal Split right after it) into
    channel Gathers. Returns how many shuffles were rewritten."""
    nh, helper = g.onnx_mod().numpy_helper, g.onnx_mod().helper
    graph = model.graph
    ix = ix or g.GraphIndex(model)
    inits, cons = ix.inits, ix.consumers
    drop: set[str] = set()
    before: dict[str, list] = {}
    for first in [n for n in graph.node if n.op_type == "Reshape"]:
        found = _shuffle(first, inits, cons)
        if found is None:
            continue
        perm, chain, outputs = found
        step = len(perm) // len(outputs)
        gathers = []
        for j, out in enumerate(outputs):
            idx = f"{g.safe_name(out)}_shuffle_indices"
            graph.initializer.append(nh.from_array(perm[j * step:(j + 1) * step], idx))
            gathers.append(helper.make_node("Gather", [first.input[0], idx], [out], axis=1,
                                            name=f"{g.safe_name(out)}_shuffle_Gather"))
        drop |= {n.name for n in chain}
        before[first.name] = gathers
    kept = []
    for n in graph.node:
        kept.extend(before.get(n.name, []))
        if n.name not in drop:
            kept.append(n)
    del graph.node[:]
    graph.node.extend(kept)
    return len(before)


def fold_shuffles(model, ix: g.GraphIndex | None = None) -> int:
    """Remove, in place, each channel shuffle that feeds (through its per-tensor Q/DQ) a
    depthwise convolution whose output feeds (through its Q/DQ) one 1×1 convolution alone,
    as in ShuffleNetV1's units. A permutation commutes with per-tensor quantization and with
    a per-channel convolution, so it moves into the weights: the depthwise convolution's
    channels are permuted, and the 1×1 convolution reads them in the new order (made dense
    when grouped: a grouped 1×1 convolution cannot read across its groups; ONNX Runtime's
    int8 kernel was measured to run the dense one as fast as the grouped one). The integers
    are the same, so the outputs are. Returns how many shuffles were removed."""
    ix = ix or g.GraphIndex(model)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers
    drop: set[str] = set()
    for first in [n for n in model.graph.node if n.op_type == "Reshape"]:
        found = _shuffle(first, inits, cons)
        if found is None or len(found[2]) != 1:
            continue
        perm, chain_nodes, (out,) = found
        path = _dw_then_pointwise(out, cons, prod, inits, len(perm))
        if path is None:
            continue
        q, dw, wdq, bias, pw_wdq, pw = path
        inverse = np.argsort(perm)
        w = _const(pw_wdq.input[0], inits)
        groups = g.attr(pw, "group", 1)
        folded = (_dense(w, groups) if groups > 1 else w)[:, inverse]
        if pairs_fit(w, "conv", {"group": groups}) and not pairs_fit(folded):
            continue   # paired weights (x86 without VNNI) the permuted columns would pair differently
        for name in [wdq.input[0], *(i for i in wdq.input[1:3] if _const(i, inits) is not None
                                     and _const(i, inits).ndim == 1), bias]:
            if name:
                g.set_initializer(inits, name, _const(name, inits)[inverse])
        if groups > 1:
            g.set_int_attr(pw, "group", 1)
        g.set_initializer(inits, pw_wdq.input[0], folded)
        q.input[0] = first.input[0]
        drop |= {n.name for n in chain_nodes}
    kept = [n for n in model.graph.node if n.name not in drop]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(drop) // 3


def _dw_then_pointwise(t: str, cons, prod, inits, channels: int):
    """(Q, depthwise Conv, its weight DQ, bias name, 1×1 weight DQ, 1×1 Conv) when ``t`` goes
    through one per-tensor Q/DQ into a depthwise Conv whose output goes through one Q/DQ into
    one 1×1 Conv alone; None otherwise."""
    def through_qdq(x):
        users = cons.get(x, [])
        pair = _qdq_copy(users[0], cons, inits) if len(users) == 1 else None
        conv = _only_user(pair[1].output[0], cons, "Conv") if pair is not None else None
        return (pair[0], conv) if conv is not None and conv.input[0] == pair[1].output[0] else (None, None)

    q, dw = through_qdq(t)
    if dw is None or g.attr(dw, "group", 1) != channels:
        return None
    wdq = prod.get(dw.input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear" or _const(wdq.input[0], inits) is None:
        return None
    scale = _const(wdq.input[1], inits)
    if scale is None or (scale.ndim and g.attr(wdq, "axis", 1) != 0):
        return None
    bias = dw.input[2] if len(dw.input) > 2 else ""
    if bias and _const(bias, inits) is None:
        return None
    _, pw = through_qdq(dw.output[0])
    pw_wdq = prod.get(pw.input[1]) if pw is not None else None
    if pw_wdq is None or pw_wdq.op_type != "DequantizeLinear" or _const(pw_wdq.input[0], inits) is None:
        return None
    if _const(pw_wdq.input[0], inits).shape[2:] != (1, 1) or g.attr(pw_wdq, "axis", 1) != 0:
        return None
    return q, dw, wdq, bias, pw_wdq, pw


def _dense(w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight [Cout, Cin/groups, kh, kw] as the dense [Cout, Cin, kh, kw]."""
    cout, per_in = w.shape[:2]
    per_out = cout // groups
    dense = np.zeros((cout, per_in * groups, *w.shape[2:]), w.dtype)
    for k in range(groups):
        dense[k * per_out:(k + 1) * per_out, k * per_in:(k + 1) * per_in] = w[k * per_out:(k + 1) * per_out]
    return dense


def _shuffle(first, inits, cons):
    """(permutation, nodes to drop, outputs) when ``first`` starts a channel shuffle."""
    shape = _const(first.input[1], inits)
    if shape is None or shape.shape != (5,) or shape[1] <= 0 or shape[2] <= 0:
        return None
    groups, per_group = int(shape[1]), int(shape[2])
    channels = groups * per_group
    tr = _only_user(first.output[0], cons, "Transpose")
    if tr is None or list(g.attr(tr, "perm", [])) != SHUFFLE_PERM:
        return None
    last = _only_user(tr.output[0], cons, "Reshape")
    back = _const(last.input[1], inits) if last is not None else None
    if back is None or back.shape != (4,) or int(back[1]) not in (channels, -1):
        return None
    perm = np.array([(k % groups) * per_group + k // groups for k in range(channels)], np.int64)
    chain = [first, tr, last]
    split = _only_user(last.output[0], cons, "Split")
    if split is not None and g.attr(split, "axis", 0) == 1 and _equal_parts(split, inits, channels):
        return perm, chain + [split], list(split.output)
    return perm, chain, [last.output[0]]


def _equal_parts(split, inits, channels: int) -> bool:
    parts = len(split.output)
    if len(split.input) > 1 and split.input[1]:
        sizes = _const(split.input[1], inits)
        return sizes is not None and len(set(sizes.tolist())) == 1 and int(sizes.sum()) == channels
    sizes = g.attr(split, "split")
    if sizes is not None:
        return len(set(sizes)) == 1 and sum(sizes) == channels
    return channels % parts == 0


def _const(name: str, inits) -> np.ndarray | None:
    return g.to_array(inits[name]) if name in inits else None


def _qdq_copy(q, cons, inits):
    """(q, dq) when ``q`` is a per-tensor QuantizeLinear whose only user is a DequantizeLinear."""
    scale = _const(q.input[1], inits) if q.op_type == "QuantizeLinear" else None
    dq = _only_user(q.output[0], cons, "DequantizeLinear") if scale is not None and scale.ndim == 0 else None
    return (q, dq) if dq is not None else None


def _only_user(t: str, cons, op: str):
    users = cons.get(t, [])
    return users[0] if len(users) == 1 and users[0].op_type == op else None


READS_INTEGERS = ("Add", "Concat", "AveragePool", "MaxPool")


def read_dequantized(model, ix: g.GraphIndex | None = None) -> int:
    """Rewire, in place, each Add / Concat / pool that reads a float tensor which the graph
    also quantizes per-tensor (for a convolution beside it) to read that quantized copy's DQ
    instead. The shared graph quantizes only the inputs of weighted layers, so ShuffleNetV1's
    residual adds and shortcut pools read the float original, and ONNX Runtime ran them in
    float and NCHW between NHWC integer convolutions; reading the copy (one rounding, on the
    step the convolution already sees) lets it fuse them as QLinearAdd / QLinearConcat /
    QLinearAveragePool. Returns how many inputs were rewired."""
    ix = ix or g.GraphIndex(model)
    inits, cons = ix.inits, ix.consumers
    rewired = 0
    for t, users in list(cons.items()):
        copy = next((pair[1].output[0] for pair in (_qdq_copy(q, cons, inits) for q in users) if pair), None)
        if copy is None:
            continue
        for u in users:
            if u.op_type in READS_INTEGERS:
                for k, name in enumerate(u.input):
                    if name == t:
                        u.input[k] = copy
                        rewired += 1
    return rewired


def pool_points(graph, prod, cons, dequantized: set[str], graph_outputs: set[str]) -> list[tuple[str, str]]:
    """(output, input) of each AveragePool/MaxPool that reads a dequantized tensor and whose
    output is not quantized: the output gets a pair on its input's scale (a pool's output
    stays within its input's range), so ONNX Runtime pools on uint8 (an average pool then
    becomes a depthwise convolution, :func:`exporters.onnx.ort_channels.pools_as_depthwise`; a
    uint8 MaxPool) and what reads the output reads integers too (ShuffleNetV1's shortcut)."""
    points: list[tuple[str, str]] = []
    done: set[str] = set()
    for n in graph.node:
        if n.op_type not in ("AveragePool", "MaxPool") or len(n.output) != 1:
            continue
        i, o = n.input[0], n.output[0]
        if o in graph_outputs or g.quantized_by_all_users(o, cons):
            continue
        if i in dequantized or i in done or (i in prod and prod[i].op_type == "DequantizeLinear"):
            points.append((o, i))
            done.add(o)
    return points


def concat_points(graph, prod, cons, dequantized: set[str], graph_outputs: set[str]) -> list[str]:
    """Outputs of Concats whose inputs will each be dequantized (a DQ output, a tensor in
    ``dequantized``, or a tensor of an earlier such Concat's chain): the anchors of
    :func:`chain`'s shared scale. A Concat whose lone ReLU is quantized needs none: ONNX
    Runtime drops that ReLU into the Q and fuses the Concat with it."""
    carried: set[str] = set()
    points = []
    for n in graph.node:
        if n.op_type != "Concat" or n.output[0] in graph_outputs or g.quantized_by_all_users(n.output[0], cons):
            continue
        relu = _only_user(n.output[0], cons, "Relu")
        if relu is not None and g.quantized_by_all_users(relu.output[0], cons):
            continue
        if all(i in carried or i in dequantized or (i in prod and prod[i].op_type == "DequantizeLinear")
               for i in n.input):
            points.append(n.output[0])
            carried |= chain(n.output[0], cons)
    return points


def chain(t: str, cons, moves=None) -> set[str]:
    """``t`` and every tensor reached from it through data-movement operators only: the
    tensors that share ``t``'s quantization scale. ``moves(node, tensor)``: whether ``node``
    moves ``tensor`` (default: one of :data:`MOVERS` reading it as its data input)."""
    seen, todo = set(), [t]
    while todo:
        x = todo.pop()
        seen.add(x)
        for u in cons.get(x, []):
            if (moves(u, x) if moves else u.op_type in MOVERS and u.input[0] == x):
                todo.extend(o for o in u.output if o)
    return seen


def downstream_scale(t: str, cons, inits) -> tuple[str, str] | None:
    """The (scale, zero point) initializer names to quantize ``t`` with when its only user is
    one MaxPool or one data-movement operator whose output is quantized by one Q: that Q's
    own. Moving data, or taking a max, commutes with a monotone quantizer, so ONNX Runtime
    then runs the operator on the integers (NhwcMaxPool, a uint8 Gather) with no float pass."""
    users = cons.get(t, [])
    if len(users) != 1 or users[0].op_type not in MOVERS + ("MaxPool",) or len(users[0].output) != 1:
        return None
    q = _only_user(users[0].output[0], cons, "QuantizeLinear")
    if q is None or len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
        return None
    return q.input[1], q.input[2]
