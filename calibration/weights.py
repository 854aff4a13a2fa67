"""INT8 weights that keep each layer's output, not just its weights, close to FP32.

For every quantized layer, one pass over calibration feeds (spread over the photos)
records the covariance of its input patches ``x`` (FP32 activations) and of the
INT8-rounded inputs ``x̂`` it will really see, their cross-covariance and means. Then:

* weights are rounded column by column with error feedback through ``Cov(x̂)``
  (GPTQ, :func:`calibration.layerwise.gptq_rows`), optionally towards the
  least-squares target ``W* = W·Cov(x, x̂)·Cov(x̂)⁻¹`` that also absorbs the part of
  the layer's own input-rounding error that is predictable from ``x̂``;
* the float bias absorbs the mean output error, ``b' = b + W·E[x] − Q·E[x̂]`` (bias
  correction, Nagel et al., *Data-Free Quantization*, 2019).

Each rounding choice is fitted on the first half of the feeds and kept only if it
beats plain rounding on the second half (the halves show different photos): with a
few photos, late layers with many inputs and few positions over-fit otherwise.
Layers are treated independently, each from FP32 inputs: correcting every layer for
the (already corrected) errors upstream of it was measured to over-correct.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from edgekit.feeds import take

from . import graph as g
from . import methods
from .layerwise import _broadcast, _patches, _weight_rows, gptq_rows, partners
from .qdq import QdqPlan, paired_scales, quantize_weight, weight_scales

DAMPING = (0.01, 0.1)
MAX_POSITIONS = 4096  # patches per feed and layer used for the statistics (seeded subsample)
# The output-aware rounding keeps four d×d float64 sums per layer (d: a patch's length). Layers are
# given them smallest d first while the total stays under this; the rest round to nearest, with the
# bias correction (which needs only means). Every mobile network and ResNet-50 fit (≤ 3.7 GiB); VGG-16
# needs 23.5 GiB (its fc6 alone 18.8) and was killed for memory on a 24 GiB machine.
SECOND_MOMENT_BUDGET = 4 << 30


class _Acc:
    """Sums over patches of one layer: x̂x̂ᵀ, x x̂ᵀ (unless ``means_only``), x, x̂."""

    def __init__(self, means_only: bool = False):
        self.hh = self.xh = self.x = self.h = None
        self.n = 0
        self.means_only = means_only

    def add(self, p: torch.Tensor, ph: torch.Tensor) -> None:
        moments = (None, None) if self.means_only else (torch.bmm(ph, ph.transpose(1, 2)),
                                                         torch.bmm(p, ph.transpose(1, 2)))
        parts = (*moments, p.sum(-1), ph.sum(-1))
        if self.x is None:
            self.hh, self.xh, self.x, self.h = (None if t is None else t.double() for t in parts)
        else:
            # float32 added into the float64 sums in place: the same double additions (widening a
            # float32 is exact) without a float64 copy of each d×d product (a 4608-input layer's
            # is 170 MB per feed)
            if not self.means_only:
                self.hh += parts[0]
                self.xh += parts[1]
            self.x += parts[2]
            self.h += parts[3]
        self.n += p.shape[-1]

    def merged(self, other: "_Acc") -> "_Acc":
        if other.x is None:
            return self
        out = _Acc(self.means_only)
        if not self.means_only:
            out.hh, out.xh = self.hh + other.hh, self.xh + other.xh
        out.x, out.h = self.x + other.x, self.h + other.h
        out.n = self.n + other.n
        return out

    def stats(self):
        """(Cov(x̂), Cov(x, x̂), E[x], E[x̂]); the covariances are None with ``means_only``."""
        mx, mh = self.x / self.n, self.h / self.n
        if self.means_only:
            return None, None, mx, mh
        cov_h = self.hh / self.n - mh.unsqueeze(2) * mh.unsqueeze(1)
        cov_xh = self.xh / self.n - mx.unsqueeze(2) * mh.unsqueeze(1)
        return cov_h, cov_xh, mx, mh


def _with_second_moments(targets, nodes, inits, budget: int = SECOND_MOMENT_BUDGET) -> set[str]:
    """The layers that get the d×d sums of the output-aware rounding, smallest first, within ``budget``."""
    cost = {}
    for t in targets:
        shape = tuple(inits[t.weight].dims)
        if nodes[t.node].op_type == "Conv":   # (O, I/g, kh, kw): g groups of d×d sums, d = I/g·kh·kw
            d, groups = int(np.prod(shape[1:])), int(g.attr(nodes[t.node], "group", 1))
        else:                                 # Gemm transB (N, K) or MatMul (K, N): d = K
            d, groups = (shape[1] if t.axis == 0 else shape[0]), 1
        cost[t.node] = 4 * 8 * d * d * groups
    chosen, used = set(), 0
    for node, c in sorted(cost.items(), key=lambda kv: kv[1]):
        if used + c > budget:
            break
        chosen.add(node)
        used += c
    return chosen


def calibrate_weights(model, plan: QdqPlan, feeds: Iterable[dict[str, np.ndarray]], max_feeds: int = 32,
                      gptq: bool = True, bias_correction: bool = True, ls_target: bool = True,
                      progress: Callable[[int, int], None] | None = None,
                      threads: int | None = None,
                      round_progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Fill ``plan.weights``, ``plan.weight_scales`` and ``plan.biases``; returns node → choice.
    ``progress``: feeds observed so far; ``round_progress``: layers rounded so far (the long part
    on wide 3×3 layers: a 4608-input ResNet layer factors its covariance three times)."""
    targets = [t for t in plan.quantized() if t.op in ("Conv", "Gemm", "MatMul")]
    if not targets or not (gptq or bias_correction):
        return {}
    feeds = take(feeds, max_feeds)
    half = max(1, len(feeds) // 2)
    nodes = {n.name: n for n in model.graph.node}
    tensors = sorted({t.activation for t in targets})
    sess = g.session(g.with_outputs(model, tensors), threads=threads)
    names = {i.name for i in sess.get_inputs()}
    inits = g.initializers(model)
    full = _with_second_moments(targets, nodes, inits)
    accs = {t.node: (_Acc(t.node not in full), _Acc(t.node not in full)) for t in targets}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, feed in enumerate(feeds):
            acts = dict(zip(tensors, sess.run(tensors, {k: v for k, v in feed.items() if k in names})))
            rounded: dict[str, torch.Tensor] = {}
            for t in targets:
                x = torch.from_numpy(np.array(acts[t.activation], np.float32))
                s = plan.act_scales.get(t.activation)
                if t.activation not in rounded:
                    rounded[t.activation] = (methods.fake_quant(x, s, t.activation in plan.unsigned,
                                                                plan.zero_point(t.activation)) if s else x)
                p, ph = _patches(nodes[t.node], x), _patches(nodes[t.node], rounded[t.activation])
                if p.shape[-1] > MAX_POSITIONS:
                    keep = torch.randperm(p.shape[-1], generator=gen)[:MAX_POSITIONS]
                    p, ph = p[..., keep], ph[..., keep]
                accs[t.node][0 if i < half else 1].add(p, ph)
            if progress:
                progress(i + 1, len(feeds))
        choices = {}
        for k, t in enumerate(targets):
            # a large layer's rounding takes tens of seconds: the progress line keeps moving inside it
            tick = (lambda k=k: round_progress(k, len(targets))) if round_progress else None
            choices[t.node] = _decide(nodes[t.node], t, inits, plan, *accs[t.node], gptq=gptq, tick=tick,
                                      bias_correction=bias_correction, ls_target=ls_target)
            if round_progress:
                round_progress(k + 1, len(targets))
        return choices


def _decide(node, t, inits, plan: QdqPlan, fit: _Acc, check: _Acc, gptq: bool, bias_correction: bool,
            ls_target: bool, tick: Callable[[], None] | None = None) -> str:
    w0 = plan.weights.get(t.weight)
    w0 = g.to_array(inits[t.weight]) if w0 is None else w0
    pair = plan.weight_pairs.get(t.weight)   # neighbours held to qdq.PAIR_BUDGET (x86 without VNNI)
    if pair is None:
        scales = weight_scales(w0, t.axis, plan.weight_clip.get(t.weight))
    else:
        scales = plan.weight_scales[t.weight] = paired_scales(w0, t.axis, pair, plan.weight_clip.get(t.weight))
    rows, back = _weight_rows(node, torch.from_numpy(np.array(w0, np.float32)), t.axis)
    full_scales = _broadcast(scales, w0.shape, t.axis)
    s_rows = _weight_rows(node, torch.from_numpy(full_scales), t.axis)[0][..., 0]
    w = rows.double()
    partner = None if pair is None else partners(w.shape[-1], w0.shape[1] if node.op_type == "Conv" else w.shape[-1])
    q_int = quantize_weight(np.asarray(w0, np.float32), t.axis, scales=scales, pair_axis=pair)[0]
    rtn = _weight_rows(node, torch.from_numpy(q_int.astype(np.float32) * full_scales), t.axis)[0].double()
    best_q, choice = rtn, "round"
    total = fit.merged(check)
    if fit.means_only:
        choice = "round-memory-budget"   # the output-aware rounding's sums would exceed SECOND_MOMENT_BUDGET
    elif gptq and check.n and fit.n:
        cov_f, cross_f, _, _ = fit.stats()
        cov_c, cross_c, _, _ = check.stats()
        wx = torch.bmm(w, cross_c)   # W·Cov(x, x̂): the same for every candidate
        best = _objective(rtn, cov_c, wx)
        rows = w.shape[1]
        for damp in DAMPING:
            cands = [("gptq", w)] + ([("gptq*", _ls_target(w, cov_f, cross_f, damp))] if ls_target else [])
            # the candidates share H and damping, and GPTQ rounds each row on its own: one pass for all
            # (one Cholesky factor, one column loop: 1.9x faster on a 1152-input 1x1 layer; same numbers,
            # tests/calibration/test_quant_methods.py)
            both = gptq_rows(torch.cat([c for _, c in cands], dim=1), cov_f, s_rows.repeat(1, len(cands)), damp, partner,
                              tick)
            for k, (name, _) in enumerate(cands):
                err = _objective(both[:, k * rows:(k + 1) * rows].double(), cov_c, wx)
                if err < best - 0.02 * abs(best):
                    best, choice = err, f"{name}(damp={damp})"
        if choice != "round":
            cov, cross, _, _ = total.stats()
            damp = float(choice.split("damp=")[1][:-1])
            target = _ls_target(w, cov, cross, damp) if choice.startswith("gptq*") else w
            best_q = gptq_rows(target, cov, s_rows, damp, partner, tick).double()
            plan.weights[t.weight] = back(best_q.float()).numpy()
            plan.weight_scales[t.weight] = scales
    if bias_correction:
        _, _, mx, mh = total.stats()
        _correct_bias(node, inits, plan, t, w, best_q, mx, mh)
    return choice


def _objective(q, cov_h, wx) -> float:
    """E‖W x − Q x̂‖² up to a constant (centred): tr(Q Ĉ Qᵀ) − 2 tr(W C_{x,x̂} Qᵀ), with ``wx`` = W C_{x,x̂}
    computed once per layer (one d×d product per candidate instead of two)."""
    return float((torch.bmm(q, cov_h) * q).sum() - 2 * (wx * q).sum())


def _ls_target(w, cov_h, cross, damp: float):
    """W* = W Cov(x, x̂) Cov(x̂)⁻¹ (damped): the best real-valued weights for the input x̂."""
    d = cov_h.shape[-1]
    scale = torch.diagonal(cov_h, dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
    reg = cov_h + damp * scale[:, None, None] * torch.eye(d, dtype=cov_h.dtype)
    rhs = (w @ cross).transpose(1, 2)
    # a Cholesky solve where reg is positive definite (half the work of LU); the centred sums can
    # leave it indefinite (a near-constant input channel: its variance is a difference of two large
    # float32-accumulated terms), and those layers keep the general solve
    low, info = torch.linalg.cholesky_ex(reg)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs, low).transpose(1, 2)
    return torch.linalg.solve(reg, rhs).transpose(1, 2)


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
