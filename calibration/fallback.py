"""The float fallback: which layers stay in float so the Q/DQ graph passes its gate, with a margin.

:func:`run` keeps the layers whose quantization alone hurts most (:mod:`calibration.sensitivity`)
in float, one at a time, until the gate passes or the float budget is spent. Then it goes a little
further: where the gate has passed but SQNR against FP32 reads less than :data:`SQNR_MARGIN_DB`
above the gate's floor, it keeps up to :data:`MARGIN_STEPS` more layers of the same ranking in float
and delivers the passing step with the highest SQNR, each of those layers charged
:data:`MIN_GAIN_DB` (a layer that buys less is not worth its run time).

Why the margin (measured 2026-12-07/08, docs/calibration-measured.md, "Eight photos no export saw"):
the fallback chooses its float layers on the held-out crops it is then judged on, so a graph that
passes by a hair there is at best even odds on photos it never saw. Pretrained EfficientNet-Lite1
passed at 25.3 dB on the bundled held-out crops and read 24.3–24.4 dB on eight photos from outside
the project (−0.9 to −1.1 dB at each of its next steps too); its next two layers of the same ranking
read 25.9 / 25.7 dB there. Across the trained networks at hand (Lite0/1/2, torchvision's
MobileNetV2, a fine-tuned ResNet-18) and two sets of unseen photos, SQNR moved by −1.1 to +0.7 dB
from the bundled held-out crops, hence 1.5 dB past the verdict's 25 dB floor: the gate's floor is
already 0.5 dB above it (the allowance for a target's rewrite, edgekit/verdict.py
``calibration_target``), and the margin adds 1.0 dB to that. Torchvision's MobileNetV2 gains 0.1 dB a layer
past its pass (docs/calibration-tried.md), so it keeps none: the margin charge. SQNR is the
criterion to aim with because it moves smoothly with each layer, where top-1 on a few hundred
crops moves by near-ties. A graph that is already 1 dB past the floor (ResNet-18, 36.9 dB) gets no
extra layer, and untrained weights (not assessed) none at all.

After that, :mod:`calibration.lean` may swap the set for a cheaper one of about the same SQNR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from edgekit.compare import Comparison

from . import gate as gate_mod
from . import qdq

SQNR_MARGIN_DB = 1.0   # aim this far past the gate's SQNR floor (25.5 dB: 26.5) once the gate passes
MARGIN_STEPS = 2       # with at most this many float layers more than the first passing step
MIN_GAIN_DB = 0.25     # and keep a margin layer only when it buys at least this much SQNR

Score = Callable[[qdq.QdqPlan, str], tuple[Path, Comparison]]


def settings() -> dict:
    """The constants that decide the margin (part of the calibration cache key)."""
    return {"sqnr_margin_db": SQNR_MARGIN_DB, "margin_steps": MARGIN_STEPS, "min_gain_db": MIN_GAIN_DB}


@dataclass
class Outcome:
    """What :func:`run` settled on: the file and comparison of the delivered step, the steps tried
    (for the manifest), the ranking it used (empty when no layer was ranked), the lean search's
    record and the margin's."""

    candidate: Path
    final: Comparison
    steps: list[dict[str, Any]] = field(default_factory=list)
    ranking: list = field(default_factory=list)
    lean: Any = None
    margin: dict[str, Any] | None = None
    first_pass: set[str] | None = None   # the first passing step's float set, when the margin added to it


def aim_db(comp: Comparison) -> float | None:
    """The SQNR the fallback aims for past a passed gate; None where accuracy is not assessed."""
    tol = comp.tolerance
    if not tol.assessed or tol.sqnr_db is None:
        return None
    return tol.sqnr_db + SQNR_MARGIN_DB


def _sqnr(comp: Comparison) -> float:
    sq = comp.primary().sqnr_db
    return sq if math.isfinite(sq) else math.inf


def short_of_margin(comp: Comparison) -> bool:
    """True when ``comp`` passed its gate but below :func:`aim_db`."""
    aim = aim_db(comp)
    return bool(comp) and aim is not None and _sqnr(comp) < aim


def run(model, plan: qdq.QdqPlan, rank: Callable[[], list], score: Score, first: tuple[Path, Comparison], options,
        max_float: int, log: Callable[[str], None]) -> Outcome:
    """Float fallback of ``plan`` (changed in place to the delivered float set) from the gate result
    ``first`` of the plan as calibrated; ``rank()`` ranks its layers damage-first
    (:func:`calibration.sensitivity.rank_layers`), ``score(plan, name)`` builds and gates a plan."""
    first_file, first_comp = first
    out = Outcome(first_file, first_comp)
    wanted = not first_comp or short_of_margin(first_comp)
    if not (wanted and options.fallback and max_float > 0):
        return out
    if first_comp:
        log(f"INT8 gate passed {_sqnr(first_comp) - first_comp.tolerance.sqnr_db:.2f} dB past its SQNR floor; "
            f"aiming for {SQNR_MARGIN_DB:g} dB with at most {MARGIN_STEPS} float layers")
    log("ranking layers by sensitivity ...")
    out.ranking = rank()
    tried = [(first_comp, first_file, set(plan.float_nodes))]
    extra = 0
    for s in out.ranking[:max_float]:
        if tried[-1][0] and not short_of_margin(tried[-1][0]):
            break
        if any(c for c, _, _ in tried):
            if extra >= MARGIN_STEPS:
                break
            extra += 1
        plan.float_nodes.add(s.node)
        f, comp = score(plan, f"fallback{len(plan.float_nodes)}")
        tried.append((comp, f, set(plan.float_nodes)))
        out.steps.append({"float": s.node, "layer_sqnr_db": round(s.sqnr_db, 2), **gate_mod.summary(comp),
                          **({"margin": True} if extra else {})})
        why = " (margin)" if extra else ""
        log(f"  keeping {s.node} in float{why}: {gate_mod.describe(comp)} -> {'pass' if comp else 'fail'}")
    passed = [t for t in tried if t[0]]
    if passed:
        # the passing step with the highest SQNR, each float layer past the first pass charged
        # MIN_GAIN_DB; on a tie, the fewest float layers
        base = len(passed[0][2])
        out.final, out.candidate, floats = max(
            passed, key=lambda t: (_sqnr(t[0]) - MIN_GAIN_DB * (len(t[2]) - base), -len(t[2])))
        if extra:
            out.margin = {"aim_sqnr_db": round(aim_db(out.final), 2), "steps": extra,
                          "reached": not short_of_margin(out.final), "float_layers": len(floats),
                          "sqnr_db": round(_sqnr(out.final), 2), **settings()}
        _set(plan, floats)
        if options.lean and floats:
            _cheaper(model, plan, out, score, log)
        if len(plan.float_nodes) > base:
            out.first_pass = set(passed[0][2])
        return out
    # no step passed: keep the best one (fewer float layers can score better than more)
    out.final, out.candidate, floats = max(tried, key=lambda t: rank_failed(t[0]))
    _set(plan, floats)
    log(f"INT8 gate cannot pass with at most {max_float} float layers ({options.max_float_fraction:.0%}); keeping "
        f"the best step ({len(floats)} in float: {gate_mod.describe(out.final)}); the artifact is written, the "
        f"gate is marked failed")
    return out


def _set(plan: qdq.QdqPlan, floats: set[str]) -> None:
    plan.float_nodes.clear()
    plan.float_nodes.update(floats)


def _cheaper(model, plan: qdq.QdqPlan, out: Outcome, score: Score, log) -> None:
    """The lean search (calibration/lean.py) against the delivered set; adopts what it finds."""
    from . import lean

    first = set(plan.float_nodes)
    costs = lean.float_costs(model, [s.node for s in out.ranking])

    def gate(floats: set[str]):
        return score(replace(plan, float_nodes=set(floats)), f"lean{len(floats)}")

    out.lean, found = lean.search(out.ranking, first, out.final.primary().sqnr_db, costs, gate, log)
    if found is not None:
        out.candidate, out.final = found
        _set(plan, out.lean.floats)


def rank_failed(comp: Comparison) -> tuple[int, float]:
    """Order gate results that all failed: fewest failed criteria first, then SQNR (top-1 on a
    few hundred photos moves by near-ties from one step to the next; SQNR does not)."""
    s = gate_mod.summary(comp)
    return (-len(comp.failures), s.get("sqnr_db") or -math.inf)
