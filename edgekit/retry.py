"""The delivered INT8 artifact misses the bar its shared graph met: take a spare fallback step.

The calibration's fallback stops at the first float set whose shared Q/DQ graph passes the gate
(calibration/quantize.py). A target then runs that graph its own way, or re-encodes it, and its
faithful-but-not-identical arithmetic flips near-ties: an artifact can miss the quantization bar
by a held-out sample or two while its runtime fidelity holds (torchvision's MobileNetV2 on
OpenVINO: 94.0 % against a 95.0 % bar, fidelity 32.7 dB). The user would get exit 1 for an
artifact one float layer away from passing. So the export asks the calibration for spare steps
(calibration/spares.py: the same calibration with the next most sensitive layers in float) and,
when :func:`reason` says so, swaps the next one in as the Q/DQ stage, rebuilds the target
artifact from it and runs parity again, at most ``len(spares)`` times (:func:`run`). Targets that
re-derive the grids in PyTorch (ExecuTorch, Core ML) then try the alternate calibration, the
other activation signedness with spares of its own (``calibration.spares.alternate``). The manifest's
Q/DQ stage records ``spare_step``; the log says why. A superseded attempt's files are set aside, not
deleted (:class:`Attempts`): when every spare misses the bar too, the closest attempt is delivered
(exit 1 all the same), and when a rebuild raises, the best attempt that built.

Never taken: for untrained weights (nothing is assessed), when a stage fails its runtime
fidelity (a runtime that computes something else is a defect to report, not to hide behind
float layers), or when the Q/DQ stage has no spares (its gate failed, its budget is spent).
"""
from __future__ import annotations

import itertools
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


def superseded(warnings: list[str], start: int, attempt: int, end: int | None = None) -> None:
    """Mark the warnings ``start:end`` as those of a superseded attempt (the manifest keeps
    them: what the first artifact scored is part of the record, but not the delivered verdict)."""
    for i in range(start, len(warnings) if end is None else end):
        if not warnings[i].startswith("[attempt "):
            warnings[i] = f"[attempt {attempt}, superseded] {warnings[i]}"


def reinstate(warnings: list[str], start: int, end: int, attempt: int) -> None:
    """Undo :func:`superseded` for ``start:end``: attempt ``attempt`` is the one delivered after all."""
    tag = f"[attempt {attempt}, superseded] "
    for i in range(start, end):
        warnings[i] = warnings[i].removeprefix(tag)


def score(comps: Sequence[Comparison]) -> tuple[int, int, float]:
    """How good an attempt's parity is: fewest criteria the delivered (last) INT8 stage fails,
    then fewest INT8 stages failing their bar, then the last stage's SQNR (top-1 on a few hundred
    samples moves by near-ties; SQNR does not). The delivered artifact comes first: an attempt
    whose shared graph passes but whose .pte misses top-1 *and* SQNR is not the better one."""
    int8 = [c for c in comps if c.precision == "int8" and c.outputs]
    failing = sum(bool(c.quantization_failures) for c in int8)
    last = int8[-1] if int8 else None
    if last is None:
        return (0, 0, 0.0)
    return (-len(last.quantization_failures), -failing, last.primary().sqnr_db)


class Attempts:
    """The attempts of one export. A superseded attempt's files (its Q/DQ stage and everything
    after it) move to ``scratch`` instead of being deleted, so that the export can deliver the
    best attempt when every spare fails too, or the best one that built when a rebuild raises."""

    def __init__(self, work: Path, scratch: Path):
        self.work, self.scratch = Path(work).resolve(), Path(scratch)
        self.kept: list[tuple[tuple[int, float], int, list[Artifact], list[Comparison], Path]] = []

    def _ours(self, stages: Sequence[Artifact]) -> list[Path]:
        paths = []
        for s in stages:
            p = s.path.resolve()
            if self.work in p.parents and p.exists() and p not in paths:
                paths.append(p)
        return paths

    def supersede(self, stages: list[Artifact], qdq_index: int, comps: Sequence[Comparison], spare: Artifact,
                  prune) -> list[Artifact]:
        """Set the current attempt aside and return the stage list for the next: ``spare`` in place
        of the Q/DQ stage (under the stage's own file name in ``work``, pruned), nothing after it."""
        n = len(self.kept) + 1
        folder = self.scratch / f"attempt{n}"
        folder.mkdir(parents=True)
        for p in self._ours(stages[qdq_index:]):
            shutil.move(str(p), str(folder / p.name))
        self.kept.append((score(comps), n, list(stages), list(comps), folder))
        old = stages[qdq_index]
        dest = self.work / old.path.name
        shutil.copyfile(spare.path, dest)
        new = Artifact(path=dest, stage=old.stage, format=old.format, precision=old.precision, target=old.target,
                       inputs=old.inputs, outputs=old.outputs, parent=old.parent, meta=spare.meta, tools=old.tools)
        return [*stages[:qdq_index], prune(new)]

    def restore(self, current: Sequence[Artifact], qdq_index: int, before: set[Path] | None = None):
        """Put the best kept attempt back in ``work`` (the current one's files, and any file that
        appeared since ``before``, move to ``scratch``). Returns (attempt number, stages, comparisons)."""
        _, n, stages, comps, folder = max(self.kept, key=lambda k: k[0])
        gone = self.scratch / "discarded"
        gone.mkdir(exist_ok=True)
        leftovers = set(self._ours(current[qdq_index:]))
        if before is not None:
            leftovers |= {p.resolve() for p in self.work.iterdir()} - before
        for p in leftovers:
            if p.exists():
                shutil.move(str(p), str(gone / f"{len(list(gone.iterdir()))}-{p.name}"))
        for f in folder.iterdir():
            shutil.move(str(f), str(self.work / f.name))
        return n, stages, comps


def run(build, check, stages: list[Artifact], spare: list[Artifact], qdq_index: int | None, kept: Attempts,
        console, prune, enabled: bool = True, more=None) -> tuple[list[Artifact], list[Comparison]]:
    """``build(stages)`` (the target's artifact appended) and ``check(stages)`` (parity), then,
    while :func:`reason` finds an INT8 stage short of its bar, the next of ``spare`` in place of
    the Q/DQ stage at ``qdq_index`` and both again. ``more``: called once, when the spares run out
    and the bar is still missed, for further Q/DQ stages to try (the alternate calibration,
    :func:`calibration.spares.alternate`: its own Q/DQ graph and spares). When every attempt misses
    too, the best one is delivered; when a rebuild raises, the best attempt that built.
    ``console`` takes the warnings (each attempt's are marked when it is superseded)."""
    from .errors import EdgekitError

    marks: dict[int, tuple[int, int]] = {}
    comps: list[Comparison] = []
    spare = list(spare)
    for attempt in itertools.count(1):
        seen, before = len(console.warnings), {p.resolve() for p in kept.work.iterdir()}
        try:
            stages = build(stages)
            comps = check(stages)
        except EdgekitError as exc:
            if not kept.kept:
                raise
            superseded(console.warnings, seen, attempt)
            n, stages, comps = kept.restore(stages, qdq_index, before)
            reinstate(console.warnings, *marks[n], n)
            console.warn(f"attempt {attempt} (a spare fallback step or the alternate calibration) failed to build: "
                         f"{exc}; delivering attempt {n}")
            break
        why = reason(comps) if enabled and qdq_index is not None and (spare or kept.kept or more) else None
        if why is None:
            break
        if not spare and more is not None:
            spare, more = _more(more, console), None
        if not spare:  # every spare step taken, still short: deliver the closest attempt
            if kept.kept and max(k[0] for k in kept.kept) > score(comps):
                superseded(console.warnings, seen, attempt)
                n, stages, comps = kept.restore(stages, qdq_index)
                reinstate(console.warnings, *marks[n], n)
                console.warn(f"every further attempt missed the bar too: delivering attempt {n}, the closest")
            break
        nxt = spare.pop(0)
        console.warn(f"{why}: taking {describe(nxt)} and rebuilding")
        marks[attempt] = (seen, len(console.warnings))
        superseded(console.warnings, seen, attempt)
        stages = kept.supersede(stages, qdq_index, comps, nxt, prune)
    return stages, comps


def further_attempts(target, stages: Sequence[Artifact], qdq_index: int, options, feeds, spare_dir: Path, log):
    """(the Q/DQ stage's spare steps, the alternate calibration for :func:`run`'s ``more``: None
    unless the target declares one and the calibration prepared spares, i.e. trained weights)."""
    from calibration import spares

    spare = spares.stages(stages[qdq_index], spare_dir)
    if not (target.alternate_calibration and options is not None and options.spare_steps):
        return spare, None
    src = stages[qdq_index - 1]
    return spare, lambda: spares.alternate(src, options, feeds.calib, feeds.heldout, spare_dir / "alternate", log,
                                           target.alternate_options)


def describe(qdq: Artifact) -> str:
    """What the Q/DQ stage ``qdq`` of a further attempt is, for the log."""
    alt, step = qdq.meta.get("alternate_calibration"), qdq.meta.get("spare_step")
    cal = f"the alternate calibration ({alt['activations']} activations)" if alt else "the calibration"
    if step and step.get("before_margin"):
        return f"{cal}'s first passing step, before its SQNR margin ({step['float_layers']} float layers)"
    return f"{cal}'s next fallback step ({step['float_added']} in float too)" if step else cal


def _more(more, console) -> list[Artifact]:
    """The Q/DQ stages ``more()`` makes; none (with a warning) when it raises."""
    from .errors import EdgekitError

    try:
        return list(more())
    except EdgekitError as exc:
        console.warn(f"the alternate calibration failed: {exc}")
        return []
