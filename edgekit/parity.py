"""Stage-by-stage parity: the reference Runner against every stage's Runner.

Reference outputs are computed once per feed and reused for every stage, so a
failure names the stage that diverged (torch → onnx → simplified → Q/DQ → engine).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .artifact import Artifact
from .compare import Comparison, Tolerance
from .contracts import Feeds, Runner
from .console import fmt_num, format_table


def reference_outputs(reference: Runner, feeds: Feeds) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    with reference:
        return [(dict(f), reference.infer(f)) for f in feeds]


def compare_stage(stage: Artifact, runner: Runner, pairs, tolerance: Tolerance, source: str = "") -> Comparison:
    comp = Comparison(stage=stage.stage, runner=runner.name, precision=stage.precision, tolerance=tolerance,
                      inputs_source=source)
    with runner:
        comp.runner = runner.name
        for feed, ref in pairs:
            comp.add(ref, runner.infer(feed))
    return comp


def run_parity(reference: Runner, stages: Sequence[tuple[Artifact, Runner]], feeds: Feeds,
               tolerance: Callable[[Artifact], Tolerance], source: str = "",
               progress: Callable[[str], None] | None = None, pairs: list | None = None) -> list[Comparison]:
    """Every stage against the reference; ``pairs`` (from :func:`reference_outputs` on ``feeds``)
    when the caller already has the reference's outputs."""
    pairs = reference_outputs(reference, feeds) if pairs is None else pairs
    out = []
    for art, runner in stages:
        if progress:
            progress(f"  parity: {art.stage} ({runner.name}) on {len(pairs)} feeds")
        out.append(compare_stage(art, runner, pairs, tolerance(art), source))
    return out


def parity_table(comparisons: Sequence[Comparison | dict]) -> str:
    rows = []
    for c in comparisons:
        d = c.to_dict() if isinstance(c, Comparison) else c
        o = d["outputs"][0] if d["outputs"] else {}
        rows.append([d["stage"], d["runner"], d["precision"], fmt_num(o.get("max_abs")),
                     fmt_num(o.get("cosine"), "cos"), fmt_num(o.get("sqnr_db"), "db"),
                     fmt_num(o.get("top1"), "pct"), fmt_num(o.get("top5"), "pct"), o.get("rows") or o.get("samples"),
                     "PASS" if d["passed"] else "FAIL: " + "; ".join(d["failures"])])
    return format_table(["stage", "runner", "precision", "max_abs", "cosine", "sqnr_db", "top1", "top5", "n",
                         "verdict"], rows)
