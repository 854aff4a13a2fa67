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


def reference_outputs(reference: Runner, feeds: Feeds, progress: Callable[[int, int], None] | None = None
                      ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(feed, reference output) for every feed; ``progress(done, total)`` after each (a large
    network in eager torch takes tens of seconds over 200 samples)."""
    feeds = feeds if hasattr(feeds, "__len__") else list(feeds)
    out = []
    with reference:
        for f in feeds:
            out.append((dict(f), reference.infer(f)))
            if progress:
                progress(len(out), len(feeds))
    return out


def compare_stage(stage: Artifact, runner: Runner, pairs, tolerance: Tolerance, source: str = "",
                  keep: list | None = None, progress: Callable[[int, int], None] | None = None) -> Comparison:
    """``stage`` against the reference outputs in ``pairs``; ``keep``, when given, receives the
    stage's own outputs (for the fidelity comparison); ``progress(done, total)`` after each feed."""
    comp = Comparison(stage=stage.stage, runner=runner.name, precision=stage.precision, tolerance=tolerance,
                      inputs_source=source)
    with runner:
        comp.runner = runner.name
        for i, (feed, ref) in enumerate(pairs):
            out = runner.infer(feed)
            comp.add(ref, out)
            if keep is not None:
                keep.append(out)
            if progress:
                progress(i + 1, len(pairs))
    return comp


def shared_graph(stages: Sequence[Artifact]) -> Artifact | None:
    """The shared reduced-precision graph (the Q/DQ or FP16 ONNX every ONNX-fed target reads)."""
    from .verdict import is_shared_graph

    return next((s for s in stages if is_shared_graph(s)), None)


def add_fidelity(comps: Sequence[Comparison], stages: Sequence[Artifact], outputs: Sequence[list],
                 shared: Artifact, runner_name: str = "onnxruntime") -> None:
    """Runtime fidelity: every reduced-precision stage other than ``shared`` against ``shared``'s
    outputs (ONNX Runtime), with the policy's floor (edgekit.verdict.fidelity_for)."""
    from .verdict import fidelity_for

    i_ref = next(i for i, s in enumerate(stages) if s is shared)
    ref_outs, ref_comp = outputs[i_ref], comps[i_ref]
    ref_comp.fidelity_role = "reference"
    for comp, art, outs in zip(comps, stages, outputs):
        if art is shared or art.precision == "fp32":
            continue
        tol, note = fidelity_for(art, ref_comp)
        f = Comparison(stage=art.stage, runner=comp.runner, precision=art.precision, tolerance=tol,
                       inputs_source=comp.inputs_source, note=note,
                       reference=f"{shared.stage} ({runner_name})")
        for ref, out in zip(ref_outs, outs):
            f.add(ref, out)
        comp.fidelity = f


def run_parity(reference: Runner, stages: Sequence[tuple[Artifact, Runner]], feeds: Feeds,
               tolerance: Callable[[Artifact], Tolerance], source: str = "",
               pairs: list | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> list[Comparison]:
    """Every stage against the reference; ``pairs`` (from :func:`reference_outputs` on ``feeds``)
    when the caller already has the reference's outputs. ``progress(stage, done, total)``: feeds
    compared so far (a Core ML package on the MIL interpreter takes about a minute)."""
    pairs = reference_outputs(reference, feeds) if pairs is None else pairs
    out, kept = [], []
    shared = shared_graph([a for a, _ in stages])
    for art, runner in stages:
        keep: list | None = [] if shared is not None and art.precision != "fp32" else None
        counted = (lambda i, n, label=f"{art.stage} ({runner.name})": progress(label, i, n)) if progress else None
        out.append(compare_stage(art, runner, pairs, tolerance(art), source, keep, counted))
        kept.append(keep)
    if shared is not None:
        add_fidelity(out, [a for a, _ in stages], kept, shared)
    return out


def parity_table(comparisons: Sequence[Comparison | dict]) -> str:
    """One row per stage: its figures against PyTorch FP32, the quantization verdict (against
    FP32, 'not assessed' for untrained weights), the runtime fidelity (against the shared graph
    run by ONNX Runtime) and the stage's overall verdict."""
    from .verdict import fidelity_verdict, quantization_verdict

    rows, notes = [], []
    for c in comparisons:
        d = c.to_dict() if isinstance(c, Comparison) else c
        o = d["outputs"][0] if d["outputs"] else {}
        quant = quantization_verdict(d) if d["precision"] != "fp32" else "-"
        head, sep, why = quant.partition(": ")
        verdict, partly, what = quant.partition(" (")
        if head == "not assessed" and sep:  # the reason once, under the table, keeps the row readable
            line = f"not assessed: {why}"
            notes += [] if line in notes else [line]
            quant = "not assessed" + "*" * (notes.index(line) + 1)
        elif partly and what.endswith(")"):  # judged, one metric left out: "PASS (top-1 not assessed: why)"
            line = what[:-1]
            notes += [] if line in notes else [line]
            quant = verdict + "*" * (notes.index(line) + 1)
        rows.append([d["stage"], d["runner"], d["precision"], fmt_num(o.get("max_abs")),
                     fmt_num(o.get("cosine"), "cos"), fmt_num(o.get("sqnr_db"), "db"),
                     fmt_num(o.get("top1"), "pct"), fmt_num(o.get("top5"), "pct"), o.get("rows") or o.get("samples"),
                     quant, fidelity_verdict(d), "PASS" if d["passed"] else "FAIL: " + "; ".join(d["failures"])])
    table = format_table(["stage", "runner", "precision", "max_abs", "cosine", "sqnr_db", "top1", "top5", "n",
                          "vs fp32", "fidelity", "verdict"], rows)
    return "\n".join([table, *(f"{'*' * i} {line}" for i, line in enumerate(notes, 1))])
