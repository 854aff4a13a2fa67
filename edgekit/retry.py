"""The delivered INT8 artifact misses the bar its shared graph met: take a spare fallback step.

The calibration's fallback stops at the first float set whose shared Q/DQ graph passes the gate
(calibration/quantize.py). A target then runs that graph its own way, or re-encodes it, and its
faithful-but-not-identical arithmetic flips near-ties: an artifact can miss the quantization bar
by a held-out sample or two while its runtime fidelity holds (torchvision's MobileNetV2 on
OpenVINO: 94.0 % against a 95.0 % bar, fidelity 32.7 dB). The user would get exit 1 for an
artifact one float layer away from passing. So the export asks the calibration for spare steps
(calibration/spares.py: the same calibration with the next most sensitive layers in float) and,
when :func:`reason` says so, swaps the next one in as the Q/DQ stage, rebuilds the target
artifact from it and runs parity again, at most ``len(spares)`` times. The manifest's Q/DQ stage
records ``spare_step``; the log says why.

Never taken: for untrained weights (nothing is assessed), when a stage fails its runtime
fidelity (a runtime that computes something else is a defect to report, not to hide behind
float layers), or when the Q/DQ stage has no spares (its gate failed, its budget is spent).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from .artifact import Artifact
from .compare import Comparison


def reason(comps: Sequence[Comparison]) -> str | None:
    """Why the export should take a spare step (an INT8 stage misses the quantization bar while
    every stage's fidelity holds), or None."""
    int8 = [c for c in comps if c.precision == "int8"]
    if any(c.fidelity is not None and c.fidelity.quantization_failures for c in int8):
        return None
    for c in int8:
        if c.assessed and c.outputs and c.quantization_failures:
            return f"{c.stage}: {c.quantization_failures[0]}"
    return None


def superseded(warnings: list[str], start: int, attempt: int) -> None:
    """Mark the warnings from ``start`` on as those of a superseded attempt (the manifest keeps
    them: what the first artifact scored is part of the record, but not the delivered verdict)."""
    for i in range(start, len(warnings)):
        warnings[i] = f"[attempt {attempt}, superseded] {warnings[i]}"


def swap(stages: list[Artifact], qdq_index: int, spare: Artifact, work: Path, prune) -> list[Artifact]:
    """The stage list with ``spare`` in place of the Q/DQ stage (written under the stage's own
    file name in ``work``, pruned) and every later stage's files removed from ``work``."""
    work = Path(work).resolve()
    old = stages[qdq_index]
    keep = {s.path.resolve() for s in stages[:qdq_index + 1]}
    for s in stages[qdq_index + 1:]:
        p = s.path.resolve()
        if p in keep or work not in p.parents:
            continue  # the Q/DQ stage delivered as is, or not ours to remove
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    dest = work / old.path.name
    shutil.copyfile(spare.path, dest)
    new = Artifact(path=dest, stage=old.stage, format=old.format, precision=old.precision, target=old.target,
                   inputs=old.inputs, outputs=old.outputs, parent=old.parent, meta=spare.meta, tools=old.tools)
    return [*stages[:qdq_index], prune(new)]
