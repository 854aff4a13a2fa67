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
    best_kl, best_i = np.inf, nbins
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    for i in range(levels, nbins + 1, max(1, nbins // 512)):
        ref = hist[:i].copy()
        if i < nbins:
            ref[i - 1] += tail[i]
        # quantize hist[:i] into `levels` groups, spread each group's mass over its non-empty bins
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        nonzero = hist[:i] > 0
        counts = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        group = np.repeat(np.arange(levels), np.diff(edges))
        q = np.where(nonzero, (sums / np.maximum(counts, 1))[group], 0.0)
        p_sum, q_sum = ref.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p = ref / p_sum
        q = q / q_sum
        mask = p > 0
        # bins where P > 0 but Q == 0 are smoothed rather than made infinite
        qm = np.where(q[mask] > 0, q[mask], 1e-10)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(best_i * stats.bin_width)


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
