"""The gate policy: what a stage must achieve, in one place (DESIGN.md §4, docs/calibration.md).

Every reduced-precision stage has two references:

* **quantization error**: the stage against PyTorch FP32 — what FP16/INT8 costs. Meaningful
  only for trained weights. Top-1 agreement is read against the FP32 model's own stability on
  the same samples (the *yardstick*, edgekit/stability.py): at least ``yardstick − 1 point``
  (never asked above the fixed 98%), at least 99% on the samples FP32 is confident about
  (softmax top-1 minus top-2 >= 0.2), and the cosine/SQNR floors of
  :data:`edgekit.compare.DEFAULT_TOLERANCES`. For untrained (deterministic-init) weights it is
  reported as "not assessed", never FAIL: their logits are near-ties everywhere.
* **runtime fidelity**: the stage against the shared Q/DQ (or FP16) ONNX graph executed by ONNX
  Runtime — does this runtime compute the quantized model it was given? Gated for any weights
  (:func:`fidelity_tolerance`).

Exporters, the calibration gate and the pipeline all ask this module; none decides on its own.
Core module: it imports nothing above edgekit's records.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from .compare import Comparison, Tolerance, tolerance_for

NOT_ASSESSED = "untrained weights (pass --pretrained or --weights)"
IMAGENET_CLASSES = 1000   # what the bundled photos show

# Runtime fidelity: SQNR of the stage against the shared graph run by ONNX Runtime (dB), read
# against the shared graph's own quantization noise (its SQNR against FP32 on the same samples,
# ``ref``). No runtime is bit-exact with another: float accumulation order and rounding ties at
# each Q move single values by one step, and a deep network amplifies those flips (untrained
# MobileNetV3-Small at 96 px: OpenVINO's execution of the shared graph starts at 140 dB after the
# first layers and ends at 20.6 dB at the logits, while the graph is 10.3 dB from FP32). So:
# RUNTIME, a target that executes the shared graph's integers itself (OpenVINO's Q/DQ route,
# TensorRT): its deviation must stay at least 3 dB below the quantization noise (less than half
# its power), i.e. fidelity >= min(30, ref + 3) dB; 30 dB (deviation 3% of the signal) is enough
# whatever the quantization noise.
# REWRITE, a stage that re-encodes the calibration (the ONNX Runtime form, Core ML / ExecuTorch
# with edgekit's weights and their own activation observers) adds rounding points of its own: it
# may deviate by up to twice the quantization noise in amplitude, fidelity >= ref − 6 dB, within
# [3, 25] dB. A wrong scale moves its tensor by tens of percent and lands far below either floor.
# A shared graph far from FP32 (ref below 20 dB: quantization noise above 1% of the signal, what
# untrained weights give) leaves no room for "3 dB under the noise": its one-step flips amplify to
# the noise's own size (untrained MobileNetV3-Small at 64 px, 5 photos: OpenVINO 15.4 dB from the
# shared graph, ref 14.3 dB), so there a RUNTIME stage gets the REWRITE floor, ref − 6 dB.
# Measurements: docs/calibration.md.
FIDELITY_RUNTIME_MAX_DB = 30.0
FIDELITY_NOISY_REF_DB = 20.0
FIDELITY_RUNTIME_MARGIN_DB = 3.0
FIDELITY_REWRITE_MARGIN_DB = 6.0
FIDELITY_REWRITE_MAX_DB = 25.0
FIDELITY_MIN_DB = 3.0
# Item 2 of issue 19: a target-specific rewrite may cost at most this much SQNR against FP32
# compared with the shared graph (trained weights), or the shared graph is delivered instead.
REWRITE_MAX_COST_DB = 0.5


def trained_weights(request: Any) -> bool:
    """Whether ``request`` (an ExportRequest) loads trained weights."""
    return bool(getattr(request, "weights", None)) or bool(getattr(request, "pretrained", False))


def top1_note(spec: Any, request: Any) -> str:
    """Why top-1 agreement on the export's photos says nothing about a model, or "". The bundled
    photos show ImageNet classes; a head with other classes (a checkpoint fine-tuned on its own,
    or a user's model) sees them out of its domain, its top-1 there is near-ties everywhere, and
    INT8 flipping them is no defect. With ``--calib`` the photos are the user's: top-1 counts."""
    classes = getattr(spec, "num_classes", IMAGENET_CLASSES)   # 0: unknown (a user's model): judged as before
    if getattr(request, "calib", None) is None and classes and classes != IMAGENET_CLASSES:
        return f"the bundled photos are not this {classes}-class model's domain (pass --calib DIR with its photos)"
    return ""


def quantization_tolerance(precision: str, trained: bool, overrides: dict[str, Any] | None = None,
                           explicit: dict[str, Any] | None = None, no_top1: str = "") -> Tolerance:
    """The threshold of the stage-vs-FP32 comparison: the precision's defaults with ``overrides``
    (the model's, a stage's) and ``explicit`` (the user's --tolerance / edgekit.toml). For
    untrained weights at reduced precision: not assessed, except on the metrics the user set
    explicitly (an option is honoured, never recorded and ignored). ``no_top1`` (:func:`top1_note`):
    trained weights on photos outside their domain keep the cosine/SQNR floors, and top-1 is
    reported, not judged, unless the user set it."""
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    tol = tolerance_for(precision, {**(overrides or {}), **explicit})
    if precision != "fp32" and not trained:
        if explicit:
            return Tolerance(**{k: v for k, v in explicit.items() if k in Tolerance.__dataclass_fields__})
        return replace(tol, assessed=False, assessed_note=NOT_ASSESSED)
    if precision != "fp32" and no_top1 and "top1" not in explicit:
        return replace(tol, top1=None, confident_top1=None, assessed_note=f"top-1: {no_top1}")
    return tol


def gate_tolerance(spec: Any, request: Any, precision: str = "int8", trained: bool | None = None) -> Tolerance:
    """:func:`quantization_tolerance` for an export: the model's overrides, then the user's."""
    model = (getattr(spec, "tolerance", None) or {}).get(precision, {})
    return quantization_tolerance(precision, trained_weights(request) if trained is None else trained, model,
                                  getattr(request, "tolerance", None) or {}, top1_note(spec, request))


def calibration_target(tol: Tolerance) -> Tolerance:
    """What the shared graph's calibration aims for: the stage tolerance with the SQNR floor
    raised by :data:`REWRITE_MAX_COST_DB`, so that a target form allowed to cost that much
    against the shared graph still meets the floor (pretrained EfficientNet-Lite0: the shared
    graph at 25.3 dB, its ONNX Runtime form 24.9 dB)."""
    if not tol.assessed or tol.sqnr_db is None:
        return tol
    return replace(tol, sqnr_db=round(tol.sqnr_db + REWRITE_MAX_COST_DB, 2))


def fidelity_tolerance(precision: str, rewrite: bool = False, reference_sqnr_db: float | None = None) -> Tolerance:
    """The fidelity floor (see the constants above) for a stage at ``precision``; ``rewrite``: the
    stage re-encodes the calibration; ``reference_sqnr_db``: the shared graph's SQNR against FP32
    on the same samples (None: unknown, the fixed caps apply)."""
    ref = reference_sqnr_db
    if not rewrite and ref is not None and ref < FIDELITY_NOISY_REF_DB:
        floor = ref - FIDELITY_REWRITE_MARGIN_DB
    elif not rewrite:
        floor = FIDELITY_RUNTIME_MAX_DB if ref is None else min(FIDELITY_RUNTIME_MAX_DB, ref + FIDELITY_RUNTIME_MARGIN_DB)
    else:
        floor = FIDELITY_REWRITE_MAX_DB if ref is None else min(FIDELITY_REWRITE_MAX_DB, ref - FIDELITY_REWRITE_MARGIN_DB)
    return Tolerance(sqnr_db=round(max(FIDELITY_MIN_DB, floor), 1))


def apply_yardstick(comparisons: list[Comparison], stability: dict[str, Any] | None) -> None:
    """Give every reduced-precision comparison the measured yardstick (FP32 vs itself)."""
    top1 = (stability or {}).get("top1")
    if top1 is None:
        return
    for c in comparisons:
        if c.precision != "fp32":
            c.yardstick_top1 = top1


def source_yardstick(source: Any) -> float | None:
    """The yardstick top-1 the pipeline measured before calibration, as the Q/DQ stage recorded
    it (``meta["options"]["yardstick_top1"]``), for the gates of targets built from that stage."""
    value = ((getattr(source, "meta", None) or {}).get("options") or {}).get("yardstick_top1")
    return None if value is None else float(value)


def quantization_verdict(c: Comparison | dict) -> str:
    """'PASS', 'FAIL', 'not assessed: …' or '-' (no figures) for the stage-vs-FP32 column."""
    d = c.to_dict() if isinstance(c, Comparison) else c
    if "quantization" in d:
        return d["quantization"]
    return "PASS" if d.get("passed") else "FAIL"


def fidelity_verdict(c: Comparison | dict) -> str:
    """The fidelity column: 'PASS 41.2 dB (>= 30)', 'FAIL 12.0 dB (< 30)', 'reference' or '-'."""
    d = c.to_dict() if isinstance(c, Comparison) else c
    f = d.get("fidelity")
    if not f:
        return d.get("fidelity_role") or "-"
    o = f["outputs"][0] if f.get("outputs") else {}
    sq, floor = o.get("sqnr_db"), (f.get("tolerance") or {}).get("sqnr_db")
    sq_s = "∞" if sq in (None, "inf") else f"{float(sq):.1f}"
    if f.get("passed"):
        return f"PASS {sq_s} dB" + (f" (>= {floor:g})" if floor is not None else "")
    return f"FAIL {sq_s} dB" + (f" (< {floor:g})" if floor is not None else "")


# Targets that execute the shared graph's own integers (the RUNTIME floor above);
# every other reduced-precision stage re-encodes the calibration and is held as a rewrite.
RUNTIME_TARGETS = ("openvino", "tensorrt")


def is_shared_graph(art: Any) -> bool:
    """The pipeline's shared Q/DQ or FP16 ONNX (calibration.quantize_int8 / calibration.fp16)."""
    return art.format == "onnx" and art.target == "onnx" and art.stage in ("qdq", "fp16")


def fidelity_kind(art: Any) -> str:
    """'runtime' or 'rewrite' (see FIDELITY_*): the stage's own claim (meta 'fidelity_kind') or its target's."""
    kind = (art.meta or {}).get("fidelity_kind")
    if kind in ("runtime", "rewrite"):
        return kind
    if art.target in RUNTIME_TARGETS and (art.meta or {}).get("int8", {}).get("route", "qdq") != "nncf":
        return "runtime"
    return "rewrite"


def fidelity_for(art: Any, shared: Comparison) -> tuple[Tolerance, str]:
    """(floor, why) for ``art``'s fidelity against the shared graph, whose comparison with FP32
    is ``shared``."""
    ref = shared.primary().sqnr_db if shared.outputs else None
    ref = None if ref is None or ref != ref or ref == float("inf") else ref
    ref_s = "?" if ref is None else f"{ref:.1f}"
    if fidelity_kind(art) == "runtime":
        tol = fidelity_tolerance(art.precision, False, ref)
        if ref is not None and ref < FIDELITY_NOISY_REF_DB:
            return tol, (f"runs the shared graph's integers: SQNR >= {tol.sqnr_db:g} dB (the shared graph's {ref_s} dB "
                         f"vs FP32 − {FIDELITY_REWRITE_MARGIN_DB:g}: below {FIDELITY_NOISY_REF_DB:g} dB its rounding "
                         "flips amplify to the noise's own size)")
        return tol, (f"runs the shared graph's integers: SQNR >= {tol.sqnr_db:g} dB (min({FIDELITY_RUNTIME_MAX_DB:g}, "
                     f"the shared graph's {ref_s} dB vs FP32 + {FIDELITY_RUNTIME_MARGIN_DB:g}))")
    tol = fidelity_tolerance(art.precision, True, ref)
    return tol, (f"re-encodes the calibration: SQNR >= {tol.sqnr_db:g} dB (the shared graph's {ref_s} dB vs FP32 "
                 f"− {FIDELITY_REWRITE_MARGIN_DB:g}, within [{FIDELITY_MIN_DB:g}, {FIDELITY_REWRITE_MAX_DB:g}])")
