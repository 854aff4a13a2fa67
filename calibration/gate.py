"""The INT8 accuracy gate: the Q/DQ model against its FP32 source on held-out feeds.

Both models run on ONNX Runtime's CPU provider (:class:`exporters.onnx.OrtRunner`).
What users care about is judged: top-1 agreement with the FP32 model (when the
weights are trained, so the top-1 class means something), cosine and SQNR of the
outputs — not an elementwise tolerance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from edgekit.compare import Comparison, Tolerance

DEFAULT_TOP1 = 0.98
DEFAULT_COSINE = 0.995


def gate_tolerance(gate_top1: bool = True, top1: float = DEFAULT_TOP1, cosine: float = DEFAULT_COSINE,
                   sqnr_db: float | None = None) -> Tolerance:
    """The default gate: top-1 agreement ≥ 98% (only with trained weights) and cosine ≥ 0.995."""
    return Tolerance(cosine=cosine, top1=top1 if gate_top1 else None, sqnr_db=sqnr_db)


def without_top1(tol: Tolerance, gate_top1: bool) -> Tolerance:
    """``tol`` with top-1 reported but not gated when the weights are untrained."""
    if gate_top1 or tol.top1 is None:
        return tol
    from dataclasses import replace

    return replace(tol, top1=None)


def run_outputs(path: Path, feeds: Iterable[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs of the ONNX model at ``path`` for every feed (ONNX Runtime, CPU)."""
    from exporters.onnx import OrtRunner

    with OrtRunner(Path(path)) as r:
        return [r.infer(f) for f in feeds]


def score(test: Path, feeds: Iterable[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]],
          tolerance: Tolerance, stage: str = "qdq", precision: str = "int8", source: str = "") -> Comparison:
    """Compare the model at ``test`` with precomputed FP32 ``reference`` outputs."""
    from exporters.onnx import OrtRunner

    c = Comparison(stage, "onnxruntime-cpu", precision, tolerance, inputs_source=source)
    with OrtRunner(Path(test)) as r:
        for feed, ref in zip(feeds, reference):
            c.add(ref, r.infer(feed))
    return c


def summary(c: Comparison) -> dict:
    """The few numbers a manifest needs from a gate comparison."""
    p = c.primary()
    sq = p.sqnr_db
    return {"passed": c.passed, "top1": p.top1, "top5": p.top5, "cosine": round(p.cosine, 6),
            "sqnr_db": None if not np.isfinite(sq) else round(sq, 2), "samples": p.rows or p.samples,
            "near_ties": p.near_ties, "near_tie_misses": p.near_tie_misses, "failures": c.failures}


def describe(c: Comparison) -> str:
    p = c.primary()
    top1 = f"top-1 {p.top1:.1%}, " if p.top1 is not None else ""
    misses = p.rows - p.top1_hits
    if p.top1 is not None and misses:
        top1 = f"top-1 {p.top1:.1%} ({p.near_tie_misses} of {misses} flips on near-ties), "
    return f"{top1}cosine {p.cosine:.5f}, SQNR {p.sqnr_db:.1f} dB"
