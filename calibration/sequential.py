"""Sequential weight calibration: each layer compensates the error of the layers before it.

Layers are processed in graph order, in a few chunks. For a chunk, the network with
every earlier layer already INT8 (weights as decided, activations quantized) runs on
calibration feeds next to the FP32 network, so each layer of the chunk sees both its
float input ``x`` and the input ``x̂`` it will really get. Its INT8 weights ``Q`` then
minimise ``E‖W x − Q x̂‖²`` rather than ``E‖(W − Q) x‖²``:

* the least-squares target ``W* = W·Cov(x, x̂)·Cov(x̂)⁻¹`` absorbs the part of the
  upstream error that is linearly predictable from ``x̂``;
* ``W*`` is rounded column by column with error feedback through ``Cov(x̂)``
  (GPTQ, :func:`calibration.layerwise.gptq_rows`);
* the bias absorbs the remaining mean error: ``b' = b + W·E[x] − Q·E[x̂]``
  (bias correction, Nagel et al. 2019, here including upstream shifts).

Every choice is fitted on one half of the feeds and checked on the other (the feeds
come grouped by photo, so the halves show different photos); plain rounding wins
wherever a fit does not carry over.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from . import graph as g
from . import qdq
from .feeds import take
from .layerwise import _broadcast, _patches, _weight_rows, gptq_rows
from .qdq import W_QMAX, QdqPlan, weight_scales

DAMPING = (0.01, 0.1)


class _Acc:
    """Per-fold sums over patches: x̂x̂ᵀ, x x̂ᵀ, x, x̂."""

    def __init__(self):
        self.hh = self.xh = self.x = self.h = None
        self.n = 0

    def add(self, p: torch.Tensor, ph: torch.Tensor) -> None:
        hh = torch.bmm(ph, ph.transpose(1, 2)).double()
        xh = torch.bmm(p, ph.transpose(1, 2)).double()
        sx, sh = p.sum(-1).double(), ph.sum(-1).double()
        if self.hh is None:
            self.hh, self.xh, self.x, self.h = hh, xh, sx, sh
        else:
            self.hh += hh
            self.xh += xh
            self.x += sx
            self.h += sh
        self.n += p.shape[-1]

    def merged(self, other: "_Acc") -> "_Acc":
        out = _Acc()
        out.hh, out.xh, out.x, out.h = self.hh + other.hh, self.xh + other.xh, self.x + other.x, self.h + other.h
        out.n = self.n + other.n
        return out

    def stats(self):
        """(Cov(x̂), Cov(x, x̂), E[x], E[x̂])"""
        mx, mh = self.x / self.n, self.h / self.n
        cov_h = self.hh / self.n - mh.unsqueeze(2) * mh.unsqueeze(1)
        cov_xh = self.xh / self.n - mx.unsqueeze(2) * mh.unsqueeze(1)
        return cov_h, cov_xh, mx, mh


def calibrate_weights(model, plan: QdqPlan, feeds: Iterable[dict[str, np.ndarray]], max_feeds: int = 32,
                      chunks: int = 6, gptq: bool = True, bias_correction: bool = True,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Fill ``plan.weights``, ``plan.weight_scales`` and ``plan.biases``; returns node → choice."""
    targets = [t for t in plan.quantized() if t.op in ("Conv", "Gemm", "MatMul")]
    if not targets or not (gptq or bias_correction):
        return {}
    feeds = take(feeds, max_feeds)
    half = max(1, len(feeds) // 2)
    inits = g.initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    size = -(-len(targets) // max(1, chunks))
    groups = [targets[i:i + size] for i in range(0, len(targets), size)]
    done: set[str] = set()
    choices: dict[str, str] = {}
    for k, group in enumerate(groups):
        partial = _partial_plan(plan, done)
        qmodel = qdq.build(model, partial)
        dq_names = {t.activation: qdq.dequantized_name(t.activation) for t in group}
        float_names = sorted({t.activation for t in group})
        fsess = g.session(g.with_outputs(model, float_names))
        qsess = g.session(g.with_outputs(qmodel, sorted(set(dq_names.values()))), optimize=False)
        names = {i.name for i in fsess.get_inputs()}
        accs = {t.node: (_Acc(), _Acc()) for t in group}
        for i, feed in enumerate(feeds):
            feed = {a: b for a, b in feed.items() if a in names}
            fx = dict(zip(float_names, fsess.run(float_names, feed)))
            qx = dict(zip(sorted(set(dq_names.values())), qsess.run(sorted(set(dq_names.values())), feed)))
            for t in group:
                node = nodes[t.node]
                p = _patches(node, torch.from_numpy(np.array(fx[t.activation], np.float32)))
                ph = _patches(node, torch.from_numpy(np.array(qx[dq_names[t.activation]], np.float32)))
                accs[t.node][0 if i < half else 1].add(p, ph)
        with torch.no_grad():
            for t in group:
                a, b = accs[t.node]
                choices[t.node] = _decide(nodes[t.node], t, inits, plan, a, b, gptq, bias_correction)
                done.add(t.node)
        if progress:
            progress(k + 1, len(groups))
    return choices


def _partial_plan(plan: QdqPlan, done: set[str]) -> QdqPlan:
    """Activations quantized everywhere, weights only where already decided."""
    return QdqPlan(plan.targets, plan.act_scales, float_nodes=set(plan.float_nodes), weights=dict(plan.weights),
                   biases=dict(plan.biases), weight_clip=plan.weight_clip, weight_scales=dict(plan.weight_scales),
                   residual=plan.residual, per_channel=plan.per_channel,
                   float_weight_nodes={t.node for t in plan.targets} - done)


def _decide(node, t, inits, plan: QdqPlan, fit: _Acc, check: _Acc, gptq: bool, bias_correction: bool) -> str:
    w0 = plan.weights.get(t.weight)
    w0 = g.to_array(inits[t.weight]) if w0 is None else w0
    scales = weight_scales(w0, t.axis, plan.weight_clip.get(t.weight))
    rows, back = _weight_rows(node, torch.from_numpy(np.array(w0, np.float32)), t.axis)
    s_rows = _weight_rows(node, torch.from_numpy(_broadcast(scales, w0.shape, t.axis)), t.axis)[0][..., 0]
    w = rows.double()
    rtn = (torch.clamp(torch.round(rows / s_rows.unsqueeze(-1)), -W_QMAX, W_QMAX) * s_rows.unsqueeze(-1)).double()
    best_q, choice = rtn, "round"
    if gptq and check.n and fit.n:
        cov_f, cross_f, _, _ = fit.stats()
        cov_c, cross_c, _, _ = check.stats()
        best = _objective(w, rtn, cov_c, cross_c)
        for damp in DAMPING:
            for target_name, target in (("gptq", w), ("gptq*", _ls_target(w, cov_f, cross_f, damp))):
                q = gptq_rows(target, cov_f, s_rows, damp).double()
                err = _objective(w, q, cov_c, cross_c)
                if err < best - 0.05 * abs(best):
                    best, choice = err, f"{target_name}(damp={damp})"
        if choice != "round":
            total = fit.merged(check)
            cov, cross, _, _ = total.stats()
            damp = float(choice.split("damp=")[1][:-1])
            target = _ls_target(w, cov, cross, damp) if choice.startswith("gptq*") else w
            best_q = gptq_rows(target, cov, s_rows, damp).double()
            plan.weights[t.weight] = back(best_q.float()).numpy()
            plan.weight_scales[t.weight] = scales
    if bias_correction:
        total = fit.merged(check) if check.n else fit
        _, _, mx, mh = total.stats()
        _correct_bias(node, inits, plan, t, w, best_q, mx, mh)
    return choice


def _objective(w, q, cov_h, cross) -> float:
    """E‖W x − Q x̂‖² up to a constant (centered): tr(Q Ĉ Qᵀ) − 2 tr(W C_{x,x̂} Qᵀ)."""
    return float(torch.einsum("grd,gde,gre->", q, cov_h, q) - 2 * torch.einsum("grd,gde,gre->", w, cross, q))


def _ls_target(w, cov_h, cross, damp: float):
    """W* = W Cov(x, x̂) Cov(x̂)⁻¹ (damped): the best real-valued weights for input x̂."""
    d = cov_h.shape[-1]
    reg = cov_h + damp * torch.diagonal(cov_h, dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)[:, None, None] \
        * torch.eye(d, dtype=cov_h.dtype)
    return torch.linalg.solve(reg, (w @ cross).transpose(1, 2)).transpose(1, 2)


def _correct_bias(node, inits, plan: QdqPlan, t, w, q, mx, mh) -> None:
    if node.op_type == "MatMul" or len(node.input) <= 2 or node.input[2] not in inits:
        return
    if node.op_type == "Gemm" and float(g.attr(node, "beta", 1.0)) != 1.0:
        return
    shift = torch.einsum("grd,gd->gr", q, mh) - torch.einsum("grd,gd->gr", w, mx)
    if node.op_type == "Gemm":
        shift = shift * float(g.attr(node, "alpha", 1.0))
    b = g.to_array(inits[node.input[2]]).astype(np.float64)
    shift = shift.reshape(-1).numpy()
    if b.shape == shift.shape:
        plan.biases[t.node] = (b - shift).astype(np.float32)
