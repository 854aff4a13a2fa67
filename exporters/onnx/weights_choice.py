"""Which INT8 weights ONNX Runtime runs faster on this CPU: paired or full [-127, 127].

On an x86 CPU without VNNI, ONNX Runtime's fast u8×s8 kernels add pairs of products in 16-bit
lanes. Paired weights (calibration/qdq.py: PAIR_BUDGET) keep them exact, so the artifact needs no
session key (edgekit/ort_options.py). Full weights need the key, which selects ONNX Runtime's exact
and slower kernels. Pairing costs a trained network accuracy, which its float fallback buys back
with float layers, and those cost time. Which effect wins depends on the network. Measured on an
AVX2 EPYC (2026-12-07, the export's own interleaved timing of each calibration's `ort` form, after
float layers got constant weights, exporters/onnx/ort_float.py; speed-up against ONNX Runtime FP32,
float layers in brackets):

| network | paired, no key | full, with the key |
|---|---|---|
| pretrained EfficientNet-Lite0 | 1.19× (5) | 1.04× (5) |
| pretrained EfficientNet-Lite1 | 1.16–1.25× (7) | 0.97–1.12× (2) |
| pretrained EfficientNet-Lite2 | 1.18× (9) | 1.00× (3) |
| torchvision's MobileNetV2 | 1.01× (17; its `ort` form fails the gate) | 0.96–0.99× (11) |

So with trained weights the export calibrates both ways (``Exporter.calibration_alternatives``),
builds the `ort` form of each, scores it against the calibration's own gate and times it interleaved
with the FP32 ONNX (:func:`choose`). A calibration is eligible when its gate passed and its `ort` form
(what the export delivers) meets that gate too. Among eligible ones that beat FP32, the one with the
fewest float layers wins, since the fallback fits float layers to the held-out crops: Lite1's full
weights read 94 % / 24.3 dB on 100 crops of photos from outside the project, its paired ones
92 % / 23.5 dB. Where none beats FP32, the fastest wins. Untrained weights have no fallback:
both calibrations keep every layer INT8, and paired runs faster (MobileNetV3-Large 1.15× against
0.89×), so they are calibrated paired only.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from edgekit import ort_options
from edgekit.artifact import Artifact
from edgekit.bench.guard import guard_seconds as request_guard_seconds
from edgekit.bench.timing import paired_ratio


def kind(cal: Artifact) -> str:
    """``paired`` or ``full``: what the INT8 stage recorded in the calibration's meta."""
    return "paired" if cal.meta.get("paired_weights") else "full"


def form_meets_gate(cal: Artifact, form: Path, heldout, ref) -> tuple[bool, dict | None]:
    """Whether the `ort` form ``form`` of calibration ``cal`` meets the export's verdict on the held-out
    feeds: the calibration's own gate (its tolerance and yardstick), less the SQNR a rewrite may cost
    (edgekit.verdict.REWRITE_MAX_COST_DB, which the calibration's target adds). (True, None) when the
    calibration recorded no assessed gate."""
    from dataclasses import replace

    from calibration.gate import score, summary
    from edgekit.compare import Tolerance
    from edgekit.verdict import REWRITE_MAX_COST_DB

    gate = cal.meta.get("gate") or {}
    tol = gate.get("tolerance")
    if not tol or not tol.get("assessed", True):
        return True, None
    tol = Tolerance(**tol)
    if tol.sqnr_db is not None:
        tol = replace(tol, sqnr_db=round(tol.sqnr_db - REWRITE_MAX_COST_DB, 2))
    c = score(form, heldout, ref, tol, stage="ort", yardstick_top1=(gate.get("after") or {}).get("yardstick_top1"))
    return c.passed, summary(c)


def pick(eligible: list[int], share: dict[int, float], floats: dict[int, int], tie: float) -> tuple[int, bool]:
    """(winner, whether the float-layer rule decided). ``share``: each calibration's INT8 latency as a
    share of FP32's. Where INT8 beats FP32 (by more than ``tie``), the fewest float layers, then the
    fastest: the fallback fits each float layer to the held-out crops, so a calibration that needed
    more of them is weaker on photos it never saw (pretrained Lite1, 2026-12-07, 100 crops of 4 photos
    from outside the project: full weights, 2 float layers, 94 % / 24.3 dB; paired, 7 float layers,
    92 % / 23.5 dB; at 0.89 and 0.80 of FP32's latency). Otherwise the fastest; within ``tie`` of it,
    the first."""
    def fastest(pool):
        best = min(share[i] for i in pool)
        return next(i for i in pool if share[i] <= best * (1 + tie))

    beat = [i for i in eligible if share[i] * (1 + tie) < 1]
    winner = fastest([i for i in beat if floats[i] == min(floats[j] for j in beat)] if beat else eligible)
    return winner, winner != fastest(eligible)


def choose(cals: list[Artifact], fp32: Artifact, feeds, request, log: Callable[[str], None]) -> tuple[int, dict]:
    """(index of the calibration to deliver, record for the manifest). Each calibration's `ort` form is
    built and timed interleaved with ``fp32`` on ONNX Runtime, each with the session config its weights
    need. Eligible: the calibrations whose gate passed and whose `ort` form meets that gate too. Among
    those that beat FP32 (by more than quant.SPEED_TIE), the fewest float layers, then the fastest; if
    none beats FP32, the fastest (within quant.SPEED_TIE of it: the first, paired). Without a passing
    one, the first."""
    from calibration.gate import run_outputs

    from .hygiene import prune
    from .ort_form import build_ort_int8
    from .quant import SPEED_TIE, time_against_fp32

    scratch = Path(tempfile.mkdtemp(prefix="edgekit-weights-"))
    try:
        forms = {}
        for i, cal in enumerate(cals):
            forms[f"c{i}"] = scratch / f"c{i}.onnx"
            build_ort_int8(cal.path, forms[f"c{i}"], feeds.calib)
            prune(forms[f"c{i}"])
        # a calibration whose gate failed is never weighed by its form (below): not scored (None)
        passed = [i for i, c in enumerate(cals) if (c.meta.get("gate") or {}).get("passed")]
        ref = run_outputs(fp32.path, feeds.heldout) if passed else None
        forms_ok = {i: form_meets_gate(c, forms[f"c{i}"], feeds.heldout, ref) if i in passed else (None, None)
                    for i, c in enumerate(cals)}
        times = time_against_fp32(fp32, forms, next(iter(feeds.heldout)), request.threads,
                                  request_guard_seconds(request))
        configs = {k: ort_options.session_config(p) for k, p in forms.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = {k: paired_ratio(times, k, "fp32")["ratio"] for k in forms}
    # a calibration whose gate passed only narrowly can lose it in its `ort` form, which is what the
    # export delivers (torchvision's MobileNetV2 paired, 2026-12-07: 95.5 % shared, 93.0 % `ort`)
    eligible = [i for i in passed if forms_ok[i][0]] or passed or [0]
    floats = {i: len(c.meta.get("float_layers") or []) for i, c in enumerate(cals)}
    winner, fewest = pick(eligible, {i: ratio[f"c{i}"] for i in eligible}, floats, SPEED_TIE)
    cands = [{"weights": kind(c), "gate_passed": i in passed, "ort_form_passed": forms_ok[i][0],
              "ort_form": forms_ok[i][1], "float_layers": floats[i],
              "p50_ms": times[f"c{i}"]["p50_ms"], "vs_fp32": ratio[f"c{i}"],
              "session_config": configs[f"c{i}"]} for i, c in enumerate(cals)]
    text = ", ".join(f"{c['weights']} {c['vs_fp32']:.2f}x ({c['float_layers']} float layers"
                     f"{'' if c['gate_passed'] else ', gate failed'}"
                     f"{'' if c['ort_form_passed'] or not c['gate_passed'] else ', its ort form fails the gate'})"
                     for c in cands)
    rule = ("the fewest float layers among the `ort` forms that beat FP32 with a passing gate" if fewest
            else "the fastest `ort` form with a passing gate")
    why = f"{cands[winner]['weights']} weights: {rule} (INT8 latency as a share of FP32's: {text})"
    if not passed:
        why = f"no calibration passed its gate; keeping the first ({text})"
    log(f"INT8 weights for ONNX Runtime on this CPU: {why}")
    return winner, {"candidates": cands, "chosen": cands[winner]["weights"], "reason": why,
                    "fp32_p50_ms": times["fp32"]["p50_ms"]}

