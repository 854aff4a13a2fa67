"""Activation statistics of an FP32 ONNX model over calibration feeds.

One pass over the feeds with ONNX Runtime, the tensors of interest exposed as extra
graph outputs: min / max of each tensor, the count of exact zeros, and a histogram of
the non-zero |x| over ``[0, |max|]`` (what percentile, entropy and MSE range
selection read). Statistics are plain records, separate from the methods that use
them, and serialisable so the calibration cache can store them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from . import graph as g

DEFAULT_BINS = 2048


@dataclass
class TensorStats:
    """What calibration saw of one activation tensor."""

    name: str
    min: float = np.inf
    max: float = -np.inf
    hist: np.ndarray | None = None    # counts of non-zero |x| in equal bins over [0, absmax]
    count: int = 0
    zeros: int = 0                    # exact zeros (ReLU outputs), kept out of the histogram
    width: float = 0.0                # histogram bin width

    @property
    def absmax(self) -> float:
        return float(max(abs(self.min), abs(self.max))) if self.count else 0.0

    @property
    def bin_width(self) -> float:
        return self.width

    def to_dict(self) -> dict:
        return {"name": self.name, "min": float(self.min), "max": float(self.max), "count": self.count,
                "zeros": self.zeros, "width": self.width, "hist": None if self.hist is None else self.hist.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorStats":
        h = d.get("hist")
        return cls(d["name"], d["min"], d["max"], None if h is None else np.asarray(h, np.float64), d["count"],
                   d.get("zeros", 0), d.get("width", 0.0))


def collect(model, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]], histograms: bool = True,
            bins: int = DEFAULT_BINS, progress: Callable[[int, int], None] | None = None,
            threads: int | None = None) -> dict[str, TensorStats]:
    """Statistics of ``tensors`` (names in ``model``, an ``onnx.ModelProto``) over ``feeds``.

    One pass. Each histogram covers ``[0, range)`` where ``range`` starts at the first
    batch's |max| and doubles (merging bin pairs, which is exact) whenever a later
    batch exceeds it; at the end it is trimmed to ``[0, |max|]`` resolution-wise by
    ``bin_width``."""
    aug = g.with_outputs(model, tensors)
    sess = g.session(aug, threads=threads)
    input_names = {i.name for i in sess.get_inputs()}
    stats = {t: TensorStats(t) for t in tensors}
    ranges: dict[str, float] = {}
    total = len(feeds) if hasattr(feeds, "__len__") else 0
    for i, feed in enumerate(feeds):
        outs = sess.run(tensors, {k: v for k, v in feed.items() if k in input_names})
        for t, a in zip(tensors, outs):
            s = stats[t]
            if not a.size:
                continue
            s.min = min(s.min, float(a.min()))
            s.max = max(s.max, float(a.max()))
            s.count += a.size
            if histograms:
                _accumulate(s, a, ranges, bins)
        if progress:
            progress(i + 1, total)
    if histograms:
        for t, s in stats.items():
            rng = ranges.get(t, 0.0)
            s.width = rng / bins
            s.hist = _trim(s.hist if s.hist is not None else np.zeros(bins), s.width, s.absmax)
    return stats


def _accumulate(s: TensorStats, a: np.ndarray, ranges: dict[str, float], bins: int) -> None:
    flat = np.abs(a.reshape(-1))
    nz = flat[flat != 0]
    s.zeros += flat.size - nz.size
    if not nz.size:
        return
    top = float(nz.max())
    if s.hist is None:
        s.hist = np.zeros(bins, np.float64)
        ranges[s.name] = top * (1 + 1e-6)
    while top >= ranges[s.name]:  # double the range: merge bin pairs
        h = s.hist
        s.hist = np.concatenate([h[0::2] + h[1::2], np.zeros(bins // 2)])
        ranges[s.name] *= 2
    idx = np.minimum((nz * (bins / ranges[s.name])).astype(np.int64), bins - 1)
    s.hist += np.bincount(idx, minlength=bins)


def _trim(hist: np.ndarray, width: float, absmax: float) -> np.ndarray:
    """Drop the empty bins above |max|."""
    if width <= 0 or absmax <= 0:
        return hist
    n = len(hist)
    keep = min(n, max(1, int(np.ceil(absmax / width))))
    out = hist[:keep].copy()
    out[-1] += hist[keep:].sum()
    return out
