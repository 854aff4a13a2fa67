"""Which INT8 weights ONNX Runtime runs faster on this CPU: paired or full [-127, 127].

On an x86 CPU without VNNI, ONNX Runtime's fast u8×s8 kernels add pairs of products in 16-bit
lanes. Paired weights (calibration/qdq.py: PAIR_BUDGET) keep them exact, so the artifact needs no
session key (edgekit/ort_options.py). Full weights need the key, which selects ONNX Runtime's exact
and slower kernels. Pairing costs a trained network accuracy, which its float fallback buys back
with float layers, and those cost time. Which effect wins depends on the network. Measured on an
AVX2 EPYC (2026-12-07, 15 interleaved rounds, the delivered `ort` forms; speed-up against ONNX
Runtime FP32, float layers in brackets):

| network | paired, no key | full, with the key |
|---|---|---|
| pretrained EfficientNet-Lite0 | 1.02× (5) | 0.94× (5) |
| pretrained EfficientNet-Lite1 | 1.03× (7) | 1.31× (2) |
| pretrained EfficientNet-Lite2 | 0.88× (9) | 1.05× (3) |
| torchvision's MobileNetV2 | 0.78× (18) | 0.88× (11) |

So with trained weights the export calibrates both ways (``Exporter.calibration_alternatives``),
builds the `ort` form of each, times them interleaved with the FP32 ONNX, and keeps the faster
among those whose calibration gate passed (:func:`choose`). Untrained weights have no fallback:
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


def choose(cals: list[Artifact], fp32: Artifact, feeds, request, log: Callable[[str], None]) -> tuple[int, dict]:
    """(index of the calibration to deliver, record for the manifest). Each calibration's `ort` form is
    built and timed interleaved with ``fp32`` on ONNX Runtime, each with the session config its weights
    need; the fastest whose gate passed wins (within quant.SPEED_TIE of it: the first, paired). Without a passing one, the first."""
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
        times = time_against_fp32(fp32, forms, next(iter(feeds.heldout)), request.threads,
                                  request_guard_seconds(request))
        configs = {k: ort_options.session_config(p) for k, p in forms.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = {k: paired_ratio(times, k, "fp32")["ratio"] for k in forms}
    passed = [i for i, c in enumerate(cals) if (c.meta.get("gate") or {}).get("passed")]
    eligible = passed or [0]
    best = min(ratio[f"c{i}"] for i in eligible)
    winner = next(i for i in eligible if ratio[f"c{i}"] <= best * (1 + SPEED_TIE))
    cands = [{"weights": kind(c), "gate_passed": i in passed, "float_layers": len(c.meta.get("float_layers") or []),
              "p50_ms": times[f"c{i}"]["p50_ms"], "vs_fp32": ratio[f"c{i}"],
              "session_config": configs[f"c{i}"]} for i, c in enumerate(cals)]
    text = ", ".join(f"{c['weights']} {c['vs_fp32']:.2f}x ({c['float_layers']} float layers"
                     f"{'' if c['gate_passed'] else ', gate failed'})" for c in cands)
    why = (f"{cands[winner]['weights']} weights: the fastest `ort` form with a passing gate "
           f"(INT8 latency as a share of FP32's: {text})")
    if not passed:
        why = f"no calibration passed its gate; keeping the first ({text})"
    log(f"INT8 weights for ONNX Runtime on this CPU: {why}")
    return winner, {"candidates": cands, "chosen": cands[winner]["weights"], "reason": why,
                    "fp32_p50_ms": times["fp32"]["p50_ms"]}

