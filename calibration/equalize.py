"""Cross-layer equalization with bias absorption on the FP32 ONNX (before calibration).

Nagel et al., *Data-Free Quantization Through Weight Equalization and Bias Correction*
(ICCV 2019). For a pair ``Conv A → act → Conv B`` where ``act`` is ReLU (positively
homogeneous: ``relu(y / s) = relu(y) / s`` for ``s > 0``), dividing A's output channel
``i`` (weights and bias) by ``s_i`` and multiplying B's input channel ``i`` by ``s_i``
leaves the network's function unchanged. ``s_i = sqrt(r1_i / r2_i)`` (``r1_i`` the range
of A's output channel ``i``, ``r2_i`` that of B's input channel ``i``) makes both equal,
so the channels of a depthwise layer that batch-norm folding blew up no longer set the
step of the per-tensor activation between the two layers nor the per-channel step of
every row of B. Pairs are found where A's output is read only by the activation and the
activation only by B; A may be any convolution (pointwise expand or depthwise), B a
dense or a depthwise convolution over A's channels. Chains (expand → depthwise →
project) are swept a few times, as in the paper.

**ReLU6 is not positively homogeneous** (measured: off by default, see :func:`equalize`): ``clip(y / s, 0, 6) = clip(y, 0, 6 s) / s``, so
scaling moves the clip of that channel. The choice made here (documented in
docs/calibration.md): a channel behind ReLU6 (``Clip(0, c)``) is scaled only where the
calibration data show its clip inactive with a margin, i.e. its pre-activation maximum
``m_i`` times :data:`CLIP_MARGIN` stays below ``c · min(1, s_i)`` (``s_i`` is bounded
below by ``m_i · margin / c``; a channel that reaches the clip keeps ``s_i = 1``). On
inputs like the calibration data the function is then exactly preserved; a channel
would differ only on an input that drives it more than 25 % past anything calibration
saw, *and* past the clip. Replacing ReLU6 by ReLU (AIMET's choice) changes the trained
network's function and is not done.

**Bias absorption** (off by default, like ReLU6 scaling: it holds on the calibration data): after equalization a channel whose pre-activation never falls
below ``c_i > 0`` on the calibration data (``relu(y) = relu(y - c) + c`` there) gives
``c_i`` to the next layer's bias (``b_B += W_B · c``), narrowing the activation range
that B's input is quantized on. Only into a B without padding (a padded border would
read 0 where the original read ``c``) and, behind ReLU6, only for channels whose clip is
inactive with the margin above.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from . import graph as g

CLIP_MARGIN = 1.25     # a ReLU6 channel is scaled only if max·margin stays below the (scaled) clip
MAX_SCALE = 64.0       # bound on one channel's scale (and 1/scale) per sweep
SWEEPS = 4


@dataclass
class Pair:
    a: str                # node names
    act: str
    b: str
    clip: float | None    # upper bound of Clip(0, c); None for ReLU / no activation
    b_depthwise: bool
    b_padded: bool = False   # B reads zero padding (explicit Pad or its own pads): no bias absorption


@dataclass
class EqualizeReport:
    pairs: int = 0
    clipped_pairs: int = 0
    scaled_channels: int = 0
    clip_pinned_channels: int = 0     # ReLU6 channels left unscaled because they reach the clip
    absorbed_channels: int = 0
    spread_before: float = 0.0        # mean over B layers of (max/min of per-column ranges), log10
    spread_after: float = 0.0
    details: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "details"}
        d["spread_before"] = round(self.spread_before, 3)
        d["spread_after"] = round(self.spread_after, 3)
        return d


def find_pairs(model) -> list[Pair]:
    """``Conv → (Relu | Clip(0, c) | nothing) → Conv`` chains with single consumers."""
    inits = g.initializers(model)
    cons = g.consumers(model)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for a in model.graph.node:
        if a.op_type != "Conv" or len(a.input) < 2 or a.input[1] not in inits:
            continue
        y = a.output[0]
        users = cons.get(y, [])
        if len(users) != 1 or y in outputs:
            continue
        act, clip, padded = users[0], None, False
        if act.op_type == "Conv":
            b, act_name, z = act, "", y
        else:
            clip = _relu_bound(act, inits)
            if clip is False:
                continue
            z = act.output[0]
            nxt = cons.get(z, [])
            if len(nxt) == 1 and _zero_pad(nxt[0], inits) and nxt[0].output[0] not in outputs:
                padded = True  # TensorFlow-SAME stride-2 convs: a constant-zero Pad commutes with scaling
                z = nxt[0].output[0]
                nxt = cons.get(z, [])
            else:
                padded = False
            if len(nxt) != 1 or z in outputs or nxt[0].op_type != "Conv":
                continue
            b, act_name = nxt[0], act.name
        if b.input[0] != z or len(b.input) < 2 or b.input[1] not in inits:
            continue
        wa, wb = g.to_array(inits[a.input[1]]), g.to_array(inits[b.input[1]])
        if inits_shared(model, a.input[1]) or inits_shared(model, b.input[1]):
            continue
        c = wa.shape[0]
        group = int(g.attr(b, "group", 1) or 1)
        if group == 1 and wb.shape[1] == c:
            dw = False
        elif group == c and wb.shape[0] == c and wb.shape[1] == 1:
            dw = True
        else:
            continue
        pairs.append(Pair(a.name, act_name, b.name, clip, dw, padded or _has_padding(b)))
    return pairs


def _zero_pad(node, inits) -> bool:
    """A constant-mode Pad with value 0 that pads only the spatial axes (NCHW)."""
    if node.op_type != "Pad":
        return False
    mode = g.attr(node, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return False
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits or float(np.asarray(g.to_array(inits[node.input[2]])).reshape(-1)[0]) != 0:
            return False
    if len(node.input) < 2 or node.input[1] not in inits:
        return False
    pads = np.asarray(g.to_array(inits[node.input[1]])).reshape(-1)
    return pads.size == 8 and not pads[[0, 1, 4, 5]].any()


def _has_padding(node) -> bool:
    auto = g.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto not in ("NOTSET", "VALID", "") or any(int(x) for x in (g.attr(node, "pads", None) or [0]))


def inits_shared(model, name: str) -> bool:
    return sum(1 for n in model.graph.node for i in n.input if i == name) != 1


def _relu_bound(node, inits):
    """None for Relu, c for Clip(0, c), False for anything else."""
    if node.op_type == "Relu":
        return None
    if node.op_type != "Clip":
        return False
    lo = g.attr(node, "min", None)
    hi = g.attr(node, "max", None)
    if len(node.input) > 1 and node.input[1]:
        lo = float(g.to_array(inits[node.input[1]])) if node.input[1] in inits else "x"
    if len(node.input) > 2 and node.input[2]:
        hi = float(g.to_array(inits[node.input[2]])) if node.input[2] in inits else "x"
    if lo is None or lo == "x" or hi == "x" or float(lo) != 0.0 or hi is None or float(hi) <= 0:
        return False
    return float(hi)


def channel_extrema(model, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, tuple]:
    """Per-channel (min, max) over the feeds of each NCHW tensor in ``tensors``."""
    sess = g.session(g.with_outputs(model, tensors))
    names = {i.name for i in sess.get_inputs()}
    out: dict[str, tuple] = {}
    for feed in feeds:
        vals = sess.run(tensors, {k: v for k, v in feed.items() if k in names})
        for t, v in zip(tensors, vals):
            axes = tuple(i for i in range(v.ndim) if i != 1)
            lo, hi = v.min(axis=axes), v.max(axis=axes)
            if t in out:
                out[t] = (np.minimum(out[t][0], lo), np.maximum(out[t][1], hi))
            else:
                out[t] = (lo, hi)
    return out


def equalize(model, feeds: Iterable[dict[str, np.ndarray]] | None = None, sweeps: int = SWEEPS,
             absorb: bool = False, margin: float = CLIP_MARGIN, relu6: bool = False):
    """A copy of ``model`` with cross-layer equalization applied; and an :class:`EqualizeReport`.

    By default only the pairs whose function is preserved for *every* input are equalized:
    through ReLU and between two convolutions with nothing in between. ``relu6=True`` also
    scales ReLU6 channels that calibration shows clear of the clip, and ``absorb=True`` moves
    biases; both are exact on the calibration data only, and on pretrained EfficientNet-Lite0
    the ReLU6 scaling moved the FP32 logits of held-out crops by up to 3.2 (of 6.7): trained
    ReLU6 channels reach the clip on photos calibration did not show. Without ``feeds`` no
    ReLU6 channel and no bias moves (nothing to check them on)."""
    m = g.named_copy(model)
    pairs = find_pairs(m)
    rep = EqualizeReport(pairs=len(pairs), clipped_pairs=sum(p.clip is not None for p in pairs))
    if not pairs:
        return m, rep
    nodes = {n.name: n for n in m.graph.node}
    inits = g.initializers(m)
    feeds = list(feeds) if feeds is not None else None
    need = sorted({nodes[p.a].output[0] for p in pairs})
    ext = channel_extrema(m, need, feeds) if feeds else {}
    W = {}

    def weight(node):
        return W.setdefault(node.input[1], g.to_array(inits[node.input[1]]).astype(np.float64))

    bias = {}

    def get_bias(node):
        if node.name not in bias:
            cout = weight(node).shape[0]
            bias[node.name] = (g.to_array(inits[node.input[2]]).astype(np.float64)
                               if len(node.input) > 2 and node.input[2] in inits else np.zeros(cout))
        return bias[node.name]

    lo = {p.a: ext[nodes[p.a].output[0]][0].astype(np.float64) for p in pairs if nodes[p.a].output[0] in ext}
    hi = {p.a: ext[nodes[p.a].output[0]][1].astype(np.float64) for p in pairs if nodes[p.a].output[0] in ext}
    rep.spread_before = _spread(pairs, nodes, weight)
    scaled = set()
    pinned = set()
    for _ in range(sweeps):
        for p in pairs:
            a, b = nodes[p.a], nodes[p.b]
            wa, wb = weight(a), weight(b)
            r1 = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
            r2 = (np.abs(wb).reshape(wb.shape[0], -1).max(axis=1) if p.b_depthwise
                  else np.abs(wb).transpose(1, 0, *range(2, wb.ndim)).reshape(wb.shape[1], -1).max(axis=1))
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            s = np.clip(s, 1 / MAX_SCALE, MAX_SCALE)
            if p.clip is not None:
                if p.a not in hi or not relu6:
                    continue  # ReLU6 pairs only on request, and only with data to check the clip
                m_i = hi[p.a] * margin
                free = m_i < p.clip
                pinned.update((p.a, i) for i in np.flatnonzero(~free))
                s = np.where(free, np.maximum(s, np.maximum(m_i, 0) / p.clip), 1.0)
            if np.allclose(s, 1.0, rtol=1e-3):
                continue
            _scale(a, b, p, s, weight, get_bias)
            if p.a in hi:
                hi[p.a] = hi[p.a] / s
                lo[p.a] = lo[p.a] / s
            scaled.update((p.a, i) for i in np.flatnonzero(np.abs(s - 1) > 1e-3))
    rep.scaled_channels = len(scaled)
    rep.clip_pinned_channels = len({k for k in pinned if k not in scaled})
    rep.spread_after = _spread(pairs, nodes, weight)
    if absorb and ext:
        for p in pairs:
            a, b = nodes[p.a], nodes[p.b]
            if p.a not in lo or p.b_padded or not p.act:
                continue
            c = np.maximum(lo[p.a], 0.0)
            if p.clip is not None:
                c = np.where(hi[p.a] * margin < p.clip, c, 0.0)
            if not (c > 0).any():
                continue
            wb = weight(b)
            get_bias(a)[:] -= c
            if p.b_depthwise:
                get_bias(b)[:] += wb.reshape(wb.shape[0], -1).sum(axis=1) * c
            else:
                get_bias(b)[:] += wb.reshape(wb.shape[0], wb.shape[1], -1).sum(-1) @ c
            hi[p.a] = hi[p.a] - c
            lo[p.a] = lo[p.a] - c
            rep.absorbed_channels += int((c > 0).sum())
    for name, w in W.items():
        g.set_initializer(inits, name, w.astype(np.float32))
    for node_name, bvec in bias.items():
        node = nodes[node_name]
        if len(node.input) > 2 and node.input[2] in inits:
            g.set_initializer(inits, node.input[2], bvec.astype(np.float32))
        elif bvec.any():
            bname = f"{g.safe_name(node_name)}_absorbed_bias"
            m.graph.initializer.append(g.onnx_mod().numpy_helper.from_array(bvec.astype(np.float32), bname))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = bname
    return m, rep


def _scale(a, b, p: Pair, s: np.ndarray, weight, get_bias) -> None:
    wa, wb = weight(a), weight(b)
    view = (-1,) + (1,) * (wa.ndim - 1)
    wa /= s.reshape(view)
    get_bias(a)[:] /= s
    if p.b_depthwise:
        wb *= s.reshape(view)
    else:
        wb *= s.reshape((1, -1) + (1,) * (wb.ndim - 2))


def _spread(pairs, nodes, weight) -> float:
    """Mean over pairs of log10(max/min) of B's per-input-channel ranges and A's per-output ranges."""
    vals = []
    for p in pairs:
        wa = weight(nodes[p.a])
        r = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
        r = r[r > 0]
        if r.size:
            vals.append(np.log10(r.max() / r.min()))
    return float(np.mean(vals)) if vals else 0.0
