"""The entropy (KL) threshold: calibration.methods computes every candidate's KL from running sums;
this file holds the definition, bin by bin, and checks that both choose the same threshold."""
from __future__ import annotations

import numpy as np
import pytest

from calibration import methods
from calibration.stats import TensorStats


def _kl_by_bins(hist: np.ndarray, i: int, levels: int = 128) -> float:
    """KL(P‖Q) for threshold bin i, as TensorRT's entropy calibration defines it."""
    ref = hist[:i].copy()
    ref[i - 1] += hist[i:].sum()
    edges = np.linspace(0, i, levels + 1).astype(np.int64)
    q = np.zeros(i)
    for a, b in zip(edges[:-1], edges[1:]):
        nz = hist[a:b] > 0
        if nz.any():
            q[a:b][nz] = hist[a:b].sum() / nz.sum()
    p = ref / ref.sum()
    q = q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / np.where(q[m] > 0, q[m], 1e-10))))


def _stats(x: np.ndarray, bins: int) -> TensorStats:
    h, e = np.histogram(x, bins=bins, range=(0, x.max()))
    return TensorStats(name="t", min=0.0, max=float(x.max()), count=x.size, hist=h.astype(np.int64),
                       width=float(e[1] - e[0]))


@pytest.mark.parametrize("case", ["normal", "cauchy", "cubed-exponential", "sparse", "outlier"])
def test_entropy_threshold_is_the_bin_by_bin_minimum(case):
    rng = np.random.default_rng(7)
    x = {"normal": lambda: np.abs(rng.standard_normal(40000)),
         "cauchy": lambda: np.abs(rng.standard_cauchy(20000)),
         "cubed-exponential": lambda: rng.exponential(1.0, 5000) ** 3,
         "sparse": lambda: np.abs(rng.standard_normal(300)) * rng.integers(1, 5, 300),
         "outlier": lambda: np.concatenate([rng.uniform(0, 1, 50000), [50.0]])}[case]()
    for bins in (2048, 777):
        st = _stats(x, bins)
        hist = st.hist.astype(np.float64)
        cands = np.arange(128, bins + 1, max(1, bins // 512))
        kl = np.array([_kl_by_bins(hist, int(i)) for i in cands])
        fast = methods._entropy_kl(hist, cands, 128)
        np.testing.assert_allclose(fast, kl, rtol=1e-9, atol=1e-12)
        assert methods.threshold(st, "entropy") == pytest.approx(cands[int(np.argmin(kl))] * st.bin_width, rel=1e-12)
