"""Range selection: from a tensor's statistics to its symmetric INT8 threshold.

The scale of a symmetric INT8 tensor is ``threshold / 127`` (zero point 0). Methods:

* ``minmax``: the largest |x| seen. No clipping; coarse steps when outliers exist.
* ``percentile``: the given percentile of |x| (e.g. 99.99): clips the rare outliers.
* ``entropy``: TensorRT's classic KL-divergence calibration: the threshold whose
  128-level quantized histogram is closest (KL) to the clipped reference histogram.
* ``mse``: the threshold that minimises the expected squared error (rounding noise
  below the threshold, clipping error above it), computed from the histogram.
* ``auto``: per tensor, the candidate among the above whose rounding gives the smallest
  error at the output of the layers that read the tensor (:mod:`calibration.ranges`,
  which needs the graph and calibration feeds; from statistics alone it is ``mse``).
"""
from __future__ import annotations

import numpy as np

from edgekit.errors import UsageError

from .stats import TensorStats

METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
QMAX = 127
UQMAX = 255   # an unsigned (uint8, zero point 0) activation: 255 steps of threshold / 255


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}'", hint=f"choose one of {', '.join(METHODS)}")
    return method


def threshold(stats: TensorStats, method: str, percentile: float = 99.99) -> float:
    """The clipping threshold (a positive float) for one tensor."""
    check_method(method)
    top = stats.absmax
    if top <= 0:
        return 1.0
    if method == "minmax" or stats.hist is None or stats.hist.sum() == 0:
        return top
    if method == "percentile":
        return _percentile(stats, percentile)
    if method == "entropy":
        return _entropy(stats)
    return _mse(stats)


def scale_for(t: float, unsigned: bool = False, floor: float = 0.0) -> float:
    """The step of threshold ``t``: ``t / 127`` (signed), ``t / 255`` (uint8 from 0), or
    ``(t − floor) / 255`` (uint8 from a proven ``floor < 0``, :mod:`calibration.bounds`)."""
    if not unsigned:
        return float(max(t, 1e-12) / QMAX)
    return float(max(t - min(floor, 0.0), 1e-12) / UQMAX)


def floor_helps(t: float, floor: float) -> bool:
    """Whether the uint8 grid from ``floor`` is finer than the symmetric one for threshold ``t``."""
    return (t - floor) / UQMAX < t / QMAX


def zero_point(scale: float, floor: float = 0.0) -> int:
    """The uint8 zero point that puts ``floor`` (≤ 0) on the grid of ``scale``: the lowest
    code is at or below it, and 0.0 stays exactly representable (zero padding)."""
    if floor >= 0:
        return 0
    return int(min(UQMAX, np.ceil(-floor / scale - 1e-6)))


def qbounds(unsigned: bool) -> tuple[int, int]:
    """The integer range of an activation: signed int8, or uint8 for a tensor that is never negative."""
    return (0, UQMAX) if unsigned else (-QMAX - 1, QMAX)


def fake_quant(x, scale: float, unsigned: bool = False, zero: int = 0):
    """``x`` (a torch tensor) rounded on the activation grid of ``scale`` (uint8 codes are
    offset by ``zero``)."""
    import torch

    lo, hi = qbounds(unsigned)
    if zero:
        return (torch.clamp(torch.round(x / scale) + zero, lo, hi) - zero) * scale
    return torch.clamp(torch.round(x / scale), lo, hi) * scale


def _percentile(stats: TensorStats, p: float) -> float:
    if not 0 < p <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {p}")
    # exact zeros count as values below every threshold
    cdf = (stats.zeros + np.cumsum(stats.hist)) / (stats.zeros + stats.hist.sum())
    i = int(np.searchsorted(cdf, p / 100.0))
    return float(min(i + 1, len(cdf)) * stats.bin_width)


def _entropy(stats: TensorStats, levels: int = 128) -> float:
    hist = stats.hist.astype(np.float64)
    nbins = len(hist)
    if nbins <= levels:
        return stats.absmax
    cands = np.arange(levels, nbins + 1, max(1, nbins // 512))
    kl = _entropy_kl(hist, cands, levels)
    if not np.isfinite(kl).any():
        return float(nbins * stats.bin_width)
    # the first candidate at the minimum (the sums below differ from a bin-by-bin sum in the last bits)
    best = np.nonzero(kl <= kl.min() + 1e-12 * max(1.0, abs(kl.min())))[0][0]
    return float(cands[best] * stats.bin_width)


def _entropy_kl(hist: np.ndarray, cands: np.ndarray, levels: int) -> np.ndarray:
    """KL(P‖Q) for every candidate threshold ``i`` (in bins) at once; inf where P or Q is empty.

    P is ``hist[:i]`` with the tail ``sum(hist[i:])`` folded into its last bin. Q quantizes ``hist[:i]``
    into ``levels`` groups of bins ``[⌊g·i/levels⌋, ⌊(g+1)·i/levels⌋)`` and spreads each group's mass
    evenly over its non-empty bins; bins where P > 0 and Q = 0 take Q = 1e-10 instead of making KL
    infinite. Every non-empty bin k < i − 1 of group g has P = h_k / N and Q = (S_g / n_g) / C_i (group
    sum S_g over its n_g non-empty bins; N the total, C_i the mass below i), so

        Σ_k P log(P/Q) = (Σ h log h − C_{i−1} log N − Σ_g S'_g log(S_g / (n_g C_i))) / N + (last bin)

    with S'_g the group's mass below bin i − 1: running sums give every candidate's KL from its
    ``levels`` groups instead of a pass over its bins (TensorRT's entropy calibration, same minimum)."""
    nbins = len(hist)
    total = hist.sum()
    if total <= 0:
        return np.full(len(cands), np.inf)
    run = np.concatenate([[0.0], np.cumsum(hist)])                       # run[j] = sum(hist[:j])
    run_nz = np.concatenate([[0.0], np.cumsum(hist > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(hist > 0, hist * np.log(np.where(hist > 0, hist, 1.0)), 0.0)
    run_hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])
    i = cands.astype(np.int64)
    edges = (np.arange(levels + 1)[None, :] * i[:, None]) // levels       # ⌊g·i/levels⌋, (c, levels+1)
    sums = run[edges[:, 1:]] - run[edges[:, :-1]]
    counts = run_nz[edges[:, 1:]] - run_nz[edges[:, :-1]]
    below = run[i]                                                       # C_i: Q's mass
    last = hist[i - 1]
    below_last = sums.copy()
    below_last[:, -1] -= last                                            # S'_g: without bin i − 1
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.log(sums / (np.maximum(counts, 1) * below[:, None]))
        cross = np.where(below_last > 0, below_last * np.where(sums > 0, logq, 0.0), 0.0).sum(axis=1)
        body = (run_hlogh[i - 1] - run[i - 1] * np.log(total) - cross) / total
        ref_last = last + (total - below)                                # the tail folds into bin i − 1
        p_last = ref_last / total
        q_last = np.where(last > 0, np.exp(logq[:, -1]), 1e-10)
        tail_term = np.where(ref_last > 0, p_last * np.log(p_last / q_last), 0.0)
    kl = body + tail_term
    return np.where(below > 0, kl, np.inf)


def _mse(stats: TensorStats, candidates: int = 256) -> float:
    hist = stats.hist
    w = stats.bin_width
    centers = (np.arange(len(hist)) + 0.5) * w
    best, best_t = np.inf, stats.absmax
    for t in np.linspace(stats.absmax / candidates, stats.absmax, candidates):
        step = t / QMAX
        clipped = centers > t
        err = np.sum(hist[~clipped]) * step * step / 12.0 + np.sum(hist[clipped] * (centers[clipped] - t) ** 2)
        if err < best:
            best, best_t = err, t
    return float(best_t)
