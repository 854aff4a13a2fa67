"""The shared INT8 stage of an export: the yardstick its gate is judged against, the calibration's
options for this target and these weights, then the calibrated Q/DQ ONNX (calibration/quantize.py)
that every target that does not quantize itself builds from (DESIGN.md §4)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from .artifact import Artifact
from .console import Console
from .contracts import ExportRequest
from .feeds import thin_heldout
from .verdict import calibration_target, gate_tolerance

# Spare fallback steps the calibration writes past a passed gate (trained weights), taken one at a
# time when the delivered artifact misses the bar its Q/DQ graph met (edgekit/retry.py).
SPARE_STEPS = 2


def int8_stage(res, request: ExportRequest, target, feeds, source: Artifact, path: Path, console: Console,
               spare_dir: Path | None = None, int8: dict | None = None) -> Artifact:
    """Calibrate ``source`` (the simplified FP32 ONNX) into the Q/DQ ONNX at ``path``. ``int8``
    receives the calibration's options, for an alternate calibration (edgekit/retry.py)."""
    from calibration.quantize import Int8Options, quantize_int8

    trained = bool(res.weights.trained)
    gate = gate_tolerance(res.spec, request, "int8", trained)
    # The float fallback ranks layers by how much INT8 hurts *these* weights: on
    # deterministic-init weights that says nothing about the trained model, and its float
    # layers would make the artifact's latency unlike the trained model's (the OpenVINO NNCF
    # route skips its fallback for the same reason).
    yard = _yardstick(res, request, feeds, source, console) if trained and request.parity else None
    opts = Int8Options(tolerance=calibration_target(gate), gate_top1=trained, fallback=trained,
                       yardstick_top1=None if yard is None else round(yard["top1"], 4),
                       unsigned=not target.signed_activations,
                       spare_steps=SPARE_STEPS if trained and request.parity else 0,
                       **target.calibration_options_for(request),
                       **({"method": request.calib_method} if request.calib_method else {}))
    if int8 is not None:
        int8["options"] = opts
    if feeds.bundled:
        console.warn("calibrating on edgekit's bundled photos: production INT8 needs your own data (--calib DIR)")
    elif trained and request.parity and (thin := thin_heldout(feeds)):
        console.warn(thin)
    if not trained:
        console.info("deterministic-init weights: every layer stays INT8 (the float fallback cannot tell how "
                     "trained weights would quantize; pass --pretrained or --weights)")
    # further calibrations to weigh by speed (their files go to the scratch folder of spare steps)
    alternatives = [] if request.dry_run or spare_dir is None else target.calibration_alternatives(request, trained)
    arts, all_opts = [], [opts, *(replace(opts, **alt) for alt in alternatives)]
    for k, o in enumerate(all_opts):
        folder = spare_dir if k == 0 else spare_dir / f"calibration{k + 1}"
        where = path if k == 0 else folder / path.name
        where.parent.mkdir(parents=True, exist_ok=True)
        kind = "" if not alternatives else f", {'paired' if o.paired_weights else 'full [-127, 127]'} weights"
        with console.step(f"INT8 calibration + Q/DQ ({feeds.calib.source}{kind})") as d:
            art = quantize_int8(source, where, feeds.calib, feeds.heldout, o, log=console.info,
                                progress=console.progress, spare_dir=folder)
            art.meta["paired_weights"] = bool(o.paired_weights)
            lay, passed = art.meta.get("layers", {}), art.meta.get("gate", {}).get("passed")
            verdict = "not assessed (untrained weights)" if not trained else "passed" if passed else "FAILED"
            d["summary"] = f"{lay.get('int8_convs', '?')}/{lay.get('convs', '?')} convs INT8, gate {verdict}"
        arts.append(art)
    if alternatives:
        art = _faster(arts, all_opts, target, source, feeds, request, console, path, spare_dir, int8)
    return art


def _faster(arts, all_opts, target, source: Artifact, feeds, request: ExportRequest, console: Console, path: Path,
            spare_dir: Path | None, int8: dict | None) -> Artifact:
    """The calibration ``target`` runs fastest (``Exporter.faster_calibration``), at ``path`` with its spare
    steps in ``spare_dir``; the choice is recorded in its meta."""
    with console.step("INT8 weights: timing each calibration's artifact against FP32") as d:
        k, record = target.faster_calibration(arts, source, feeds, request, console.info)
        d["summary"] = f"{record.get('chosen', 'the first')} weights"
    art = arts[k]
    if k:
        shutil.copyfile(art.path, path)
        for f in art.path.parent.glob("spare*.onnx"):   # the spare steps the retry reads (edgekit/retry.py)
            shutil.copyfile(f, spare_dir / f.name)
        art = replace(art, path=path)
        if int8 is not None:
            int8["options"] = all_opts[k]
    art.meta["weights_choice"] = record
    return art


def _yardstick(res, request: ExportRequest, feeds, source: Artifact, console: Console) -> dict | None:
    """FP32's own top-1 stability under ±½ pixel step of input noise (calibration/gate.py), or
    None where there is no image input or no class output (the fixed top-1 floor applies)."""
    from calibration.gate import yardstick

    with console.step("yardstick for the INT8 gate (FP32 ONNX vs itself, ±½ pixel step of input noise)") as d:
        yard = yardstick(source.path, feeds.heldout, res.inputs[0], res.spec.preprocess, progress=console.progress)
        if yard is None or yard.get("top1") is None:
            d["summary"] = "no image input or no class output: the fixed top-1 floor applies"
            return None
        d["summary"] = f"top-1 {yard['top1']:.1%}"
        return yard
