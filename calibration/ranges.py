"""Activation ranges chosen per tensor by the error they cause in the layers that read them.

The histogram methods (:mod:`calibration.methods`) each minimise a proxy of their own:
MSE the tensor's squared error, entropy a KL divergence, percentile nothing at all. What
matters is the output of the layer that reads the tensor: a clipped outlier in a channel
whose weights are large costs more than rounding noise spread over channels the layer
barely uses. ``method="auto"`` computes every candidate threshold (minmax, MSE, entropy,
three percentiles) from the statistics and keeps, per tensor, the one whose fake-quantized
tensor gives the smallest relative squared error at the output of its consumers (the
float Conv / Gemm / MatMul, on a few calibration feeds).

Fixed ranges, not calibrated:

* a ``Sigmoid`` / ``HardSigmoid`` output (squeeze-excite and swish gates) lives in
  [0, 1] by construction: threshold exactly 1 (step 1/255 as uint8, 1/127 signed), so a gate of 1 stays 1 and
  the grid does not depend on which photos were seen;
* a ``Clip(0, c)`` output (ReLU6) never exceeds ``c``: no candidate above it.

h-swish and SiLU outputs are asymmetric (minimum −0.375 and −0.278, maximum unbounded);
in the symmetric scheme their negative half is nearly empty, so a threshold from |x| alone
over-weights the positive tail. Scoring candidates by the consumer's output error is what
handles them: it sees the real signed values and the weights that read them.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.feeds import take

from . import graph as g
from . import methods
from .stats import TensorStats

CANDIDATES = (("minmax", None), ("mse", None), ("entropy", None), ("percentile", 99.9), ("percentile", 99.99),
              ("percentile", 99.999))
GATES = ("Sigmoid", "HardSigmoid")
TIE = 0.05   # relative output-error margin within which the widest candidate wins


def fixed_threshold(model, tensor: str) -> float | None:
    """The threshold a tensor's producer fixes (a gate: 1.0), or None."""
    prod = g.producers(model).get(tensor)
    if prod is not None and prod.op_type in GATES:
        return 1.0
    return None


def clip_bound(model, tensor: str) -> float | None:
    prod = g.producers(model).get(tensor)
    if prod is None or prod.op_type != "Clip":
        return None
    inits = g.initializers(model)
    hi = g.attr(prod, "max", None)
    if len(prod.input) > 2 and prod.input[2] in inits:
        hi = float(g.to_array(inits[prod.input[2]]))
    return None if hi is None else float(hi)


SIGNED = ", signed"   # a floored tensor's choice held on the symmetric grid (its label ends so)


def candidates(stats: TensorStats) -> dict[str, float]:
    out = {}
    for name, p in CANDIDATES:
        label = name if p is None else f"{name}{p}"
        out[label] = methods.threshold(stats, name, p if p is not None else 99.99)
    return out


def select(model, targets, stats: dict[str, TensorStats], feeds: Iterable[dict[str, np.ndarray]],
           max_feeds: int = 8, unsigned: frozenset[str] | set[str] = frozenset(),
           floors: dict[str, float] | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """(tensor → threshold, tensor → chosen candidate) for every activation in ``targets``;
    a tensor in ``unsigned`` is scored on the uint8 grid it will have (from its floor in
    ``floors`` where it has one below 0)."""
    floors = floors or {}
    tensors = sorted({t.activation for t in targets})
    thresholds: dict[str, float] = {}
    chosen: dict[str, str] = {}
    scored = []
    for t in tensors:
        fixed = fixed_threshold(model, t)
        if fixed is not None:
            thresholds[t], chosen[t] = fixed, "gate[0,1]"
        elif stats[t].absmax <= 0 or stats[t].hist is None:
            thresholds[t], chosen[t] = methods.threshold(stats[t], "minmax"), "minmax"
        else:
            scored.append(t)
    if not scored:
        return thresholds, chosen
    ops = consumers(model, targets)
    feeds = take(feeds, max_feeds)
    acts = activations(model, scored, feeds)
    with torch.no_grad():
        for t in scored:
            x = torch.from_numpy(acts.pop(t))
            cands = candidates(stats[t])
            bound = clip_bound(model, t)
            if bound is not None:
                cands = {k: min(v, bound) for k, v in cands.items()}
            refs = [op(x) for op in ops[t]]
            errs = {label: output_error(ops[t], x, th, refs, t in unsigned, floors.get(t, 0.0))
                    for label, th in cands.items()}
            if t in floors:   # the floor's uint8 grid, or the symmetric one where it is finer (T < |floor|)
                signed = {f"{label}{SIGNED}": th for label, th in cands.items()}
                errs.update({label: output_error(ops[t], x, th, refs) for label, th in signed.items()})
                cands.update(signed)
            # within TIE of the least error, the widest range: clipping error grows on photos that
            # calibration did not see, rounding error does not
            least = min(errs.values())
            best = max((k for k in errs if errs[k] <= least * (1 + TIE)), key=lambda k: cands[k])
            thresholds[t], chosen[t] = cands[best], best
    return thresholds, chosen


def consumers(model, targets) -> dict[str, list]:
    """tensor → the float linear maps of the quantized layers that read it."""
    nodes = {n.name: n for n in model.graph.node}
    inits = g.initializers(model)
    out: dict[str, list] = {}
    for t in targets:
        out.setdefault(t.activation, []).append(_consumer(nodes[t.node], inits))
    return out


def activations(model, tensors: list[str], feeds) -> dict[str, np.ndarray]:
    """Each tensor over ``feeds``, concatenated on the batch axis."""
    sess = g.session(g.with_outputs(model, tensors))
    names = {i.name for i in sess.get_inputs()}
    acts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for f in feeds:
        for t, v in zip(tensors, sess.run(tensors, {k: v for k, v in f.items() if k in names})):
            acts[t].append(v)
    return {t: np.concatenate(v, axis=0).astype(np.float32) for t, v in acts.items()}


def output_error(ops, x: torch.Tensor, threshold: float, refs=None, unsigned: bool = False,
                 floor: float = 0.0) -> float:
    """Relative squared error at the consumers' outputs when ``x`` is rounded on the INT8 grid
    of ``threshold`` (signed, or uint8 for an ``unsigned`` tensor, from ``floor``; summed over
    consumers)."""
    scale = methods.scale_for(threshold, unsigned, floor)
    xq = methods.fake_quant(x, scale, unsigned, methods.zero_point(scale, floor) if unsigned else 0)
    refs = refs if refs is not None else [op(x) for op in ops]
    return sum(float(((op(xq) - r) ** 2).sum() / max(float((r ** 2).sum()), 1e-30)) for op, r in zip(ops, refs))


def _consumer(node, inits):
    """The float linear map of a weighted node (bias left out: it cancels in the error)."""
    w = torch.from_numpy(np.array(g.to_array(inits[node.input[1]]), np.float32))
    if node.op_type == "Conv":
        pads = list(g.attr(node, "pads", [0, 0, 0, 0]))
        kw = dict(stride=list(g.attr(node, "strides", [1, 1])), dilation=list(g.attr(node, "dilations", [1, 1])),
                  groups=int(g.attr(node, "group", 1)))
        auto = g.attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if w.ndim != 4 or auto not in ("NOTSET", "VALID", ""):
            return lambda x: x  # not a plain 2-D conv: score the tensor itself
        return lambda x: F.conv2d(F.pad(x, [pads[1], pads[3], pads[0], pads[2]]) if any(pads) else x, w, **kw)
    if node.op_type == "Gemm":
        wt = w.T if g.attr(node, "transB", 0) else w
        return lambda x: x.reshape(x.shape[0], -1) @ wt
    if node.op_type == "MatMul" and w.ndim == 2:
        return lambda x: x @ w
    return lambda x: x
