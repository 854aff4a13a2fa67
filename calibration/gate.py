"""The INT8 accuracy gate: the Q/DQ model against its FP32 source on held-out feeds.

Both models run on ONNX Runtime's CPU provider (:func:`calibration.graph.infer_fn`).
What users care about is judged: top-1 agreement with the FP32 model (when the
weights are trained, so the top-1 class means something), cosine and SQNR of the
outputs — not an elementwise tolerance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgekit.compare import DEFAULT_TOLERANCES, Comparison, Tolerance
from edgekit.verdict import quantization_tolerance

# The policy's INT8 defaults (edgekit/verdict.py, edgekit/compare.py): one source for both.
DEFAULT_TOP1 = DEFAULT_TOLERANCES["int8"].top1
DEFAULT_COSINE = DEFAULT_TOLERANCES["int8"].cosine


def gate_tolerance(gate_top1: bool = True, top1: float | None = None, cosine: float | None = None,
                   sqnr_db: float | None = None) -> Tolerance:
    """The policy's INT8 gate for trained weights (edgekit.verdict.quantization_tolerance), with
    top-1 dropped when ``gate_top1`` is False. The pipeline passes its own tolerance, which for
    untrained weights is 'not assessed' (the calibration then always passes its gate)."""
    return without_top1(quantization_tolerance("int8", True, {"top1": top1, "cosine": cosine, "sqnr_db": sqnr_db}),
                        gate_top1)


def without_top1(tol: Tolerance, gate_top1: bool) -> Tolerance:
    """``tol`` with top-1 (and confident top-1) reported but not gated."""
    if gate_top1 or tol.top1 is None:
        return tol
    from dataclasses import replace

    return replace(tol, top1=None, confident_top1=None)


def run_outputs(path: Path, feeds: Iterable[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs of the ONNX model at ``path`` for every feed (ONNX Runtime, CPU)."""
    from .graph import infer_fn

    infer = infer_fn(Path(path))
    return [infer(f) for f in feeds]


def score(test: Path, feeds: Iterable[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]],
          tolerance: Tolerance, stage: str = "qdq", precision: str = "int8", source: str = "",
          yardstick_top1: float | None = None) -> Comparison:
    """Compare the model at ``test`` with precomputed FP32 ``reference`` outputs; ``yardstick_top1``:
    the FP32 model's own top-1 stability on these feeds (edgekit/stability.py), which sets the
    top-1 floor as in the export's verdict."""
    from .graph import infer_fn

    c = Comparison(stage, "onnxruntime-cpu", precision, tolerance, inputs_source=source,
                   yardstick_top1=yardstick_top1)
    infer = infer_fn(Path(test))
    for feed, ref in zip(feeds, reference):
        c.add(ref, infer(feed))
    return c


def summary(c: Comparison) -> dict:
    """The few numbers a manifest needs from a gate comparison."""
    p = c.primary()
    sq = p.sqnr_db
    return {"passed": c.passed, "top1": p.top1, "top5": p.top5, "cosine": round(p.cosine, 6),
            "sqnr_db": None if not np.isfinite(sq) else round(sq, 2), "samples": p.rows or p.samples,
            "near_ties": p.near_ties, "near_tie_misses": p.near_tie_misses, "failures": c.failures,
            "confident": p.confident, "confident_top1": p.confident_top1, "assessed": c.tolerance.assessed,
            "yardstick_top1": c.yardstick_top1}


def describe(c: Comparison) -> str:
    p = c.primary()
    if not c.tolerance.assessed:
        return f"cosine {p.cosine:.5f}, SQNR {p.sqnr_db:.1f} dB (accuracy not assessed: {c.tolerance.assessed_note})"
    top1 = f"top-1 {p.top1:.1%}, " if p.top1 is not None else ""
    misses = p.rows - p.top1_hits
    if p.top1 is not None and misses:
        top1 = f"top-1 {p.top1:.1%} ({p.near_tie_misses} of {misses} flips on near-ties), "
    return f"{top1}cosine {p.cosine:.5f}, SQNR {p.sqnr_db:.1f} dB"


def yardstick(path: Path, feeds: Iterable[dict[str, np.ndarray]], input, pre,
              progress: Callable[[str, int, int], None] | None = None) -> dict | None:
    """The FP32 ONNX at ``path`` against itself with ±½ pixel step of input noise on ``feeds``
    (edgekit/stability.py): the top-1 stability that sets the gate's top-1 floor for trained
    weights, measured before calibration so the float fallback aims at the export's own bar.
    None when the input is not an image. ``progress(phase, done, total)``: the clean pass, then the
    noisy one."""
    from edgekit.stability import reference_stability

    from .graph import infer_fn

    infer = infer_fn(Path(path))
    feeds = list(feeds)
    pairs = []
    for f in feeds:
        pairs.append((f, infer(f)))
        if progress:
            progress("clean", len(pairs), len(feeds))
    noisy = (lambda i, n: progress("noisy", i, n)) if progress else None
    return reference_stability(infer, input, pre, pairs, progress=noisy)
