"""Which INT8 graph form the OpenVINO target delivers on the Q/DQ route, chosen by measurement (issue 20).

Candidates, both from the same calibration:

* ``shared_qdq``: the shared Q/DQ ONNX as it is (what TensorRT builds from);
* ``integer_movement``: that graph with its concat/shuffle/split groups on integers
  (:mod:`exporters.openvino.movement`), built only when the graph has such a group.

Each is scored by OpenVINO against the FP32 model on the held-out feeds. The movement form is
not a candidate when it fails the accuracy gate the shared graph passes, when on trained weights
it costs more than ``edgekit.verdict.REWRITE_MAX_COST_DB`` SQNR against FP32, or when it strays
from the shared graph beyond the rewrite fidelity floor. The candidates left are timed
interleaved with each other and with the FP32 IR on the export's device, threads and hint, and
the fastest is delivered (ties within ``exporters.onnx.quant.SPEED_TIE`` go to the one closer to
FP32), exactly as the ``onnx`` target chooses its ONNX Runtime form. The INT8-vs-FP32 latency
guard is read from the same run.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edgekit import verdict
from edgekit.bench.guard import guard_record, guard_seconds
from edgekit.bench.timing import paired_ratio, time_runners
from edgekit.compare import Comparison
from edgekit.contracts import ExportContext

from . import nncf as nq
from .runner import OpenVinoRunner

SHARED, MOVEMENT = "shared_qdq", "integer_movement"
FORM_TEXT = {SHARED: "the shared Q/DQ graph as it is",
             MOVEMENT: "the shared Q/DQ graph with its data movement (concat, shuffle, split, max-pool) on integers "
                       "(exporters/openvino/movement.py)"}


def movement_model(src_path: Path):
    """(OpenVINO model of the integer-movement form, rewrite counts), or (None, counts) when the
    graph has nothing to move."""
    import onnx
    import openvino as ov

    from calibration import graph as g

    from .movement import integer_movement

    m = g.named_copy(g.load(src_path))
    counts = integer_movement(m)
    if not counts["groups"] and not counts["quantizers_moved_up"]:
        return None, counts
    scratch = Path(tempfile.mkdtemp(prefix="edgekit-ov-forms-"))
    try:
        path = scratch / "movement.onnx"
        onnx.save(m, str(path))
        return ov.convert_model(str(path)), counts  # the ONNX frontend parses the file into memory
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _comparison(pairs, outs, tol, yardstick) -> Comparison:
    comp = nq.score_outputs(pairs, outs, tol)
    # the bar the parity verdict applies (yardstick − 1 point), as ExecuTorch's and Core ML's gates do
    comp.yardstick_top1 = yardstick
    return comp


def choose_form(ctx: ExportContext, model, fp32_model, src, pairs, tol, trained: bool, runtime: dict[str, Any]):
    """(delivered model, its gate Comparison, manifest meta, latency-guard record or None when
    only one form was built: the caller then times it against FP32 itself)."""
    threads = ctx.request.threads
    feeds = [f for f, _ in pairs]
    yardstick = verdict.source_yardstick(src)
    outs = {SHARED: nq.outputs_of(model, feeds, src.inputs, src.outputs, threads)}
    comps = {SHARED: _comparison(pairs, outs[SHARED], tol, yardstick)}
    moved, counts = movement_model(src.path)
    meta: dict[str, Any] = {"form": SHARED, "movement": counts}
    if moved is None:
        meta["forms"] = "one candidate: the graph has no concat group or shuffle/max-pool chain to move on integers"
        return model, comps[SHARED], meta, None
    ctx.log(f"OpenVINO INT8: a second form moves data on integers ({counts['groups']} concat group(s), "
            f"{counts['quantizers_moved_up']} quantizer(s) moved ahead of a shuffle or max-pool); scoring and timing both")
    outs[MOVEMENT] = nq.outputs_of(moved, feeds, src.inputs, src.outputs, threads)
    comps[MOVEMENT] = _comparison(pairs, outs[MOVEMENT], tol, yardstick)
    ref_db = comps[SHARED].primary().sqnr_db
    sq = {k: comps[k].primary().sqnr_db for k in comps}
    cost = sq[SHARED] - sq[MOVEMENT]
    fidelity = nq.sqnr(outs[SHARED], outs[MOVEMENT])
    floor = verdict.fidelity_tolerance("int8", True, ref_db).sqnr_db
    reasons = []
    if comps[SHARED].passed and not comps[MOVEMENT].passed:
        reasons.append(f"it fails the gate the shared graph passes ({'; '.join(comps[MOVEMENT].failures)})")
    if trained and cost > verdict.REWRITE_MAX_COST_DB:
        reasons.append(f"it costs {cost:.2f} dB SQNR against FP32 (at most {verdict.REWRITE_MAX_COST_DB} dB on "
                       "trained weights)")
    if not counts["groups"]:  # exact moves only: held to the runtime floor
        floor = verdict.fidelity_tolerance("int8", False, ref_db).sqnr_db
    if fidelity < floor:
        reasons.append(f"it is {fidelity:.1f} dB from the shared graph (floor {floor:g} dB)")
    records = {k: {"form": k, "sqnr_db": round(sq[k], 3), "gate_passed": comps[k].passed} for k in comps}
    records[MOVEMENT].update(cost_db=round(cost, 3), fidelity_db=round(fidelity, 2), fidelity_floor_db=floor,
                             accuracy_passed=not reasons)
    passing = [SHARED] if reasons else [SHARED, MOVEMENT]
    if reasons:
        ctx.log(f"OpenVINO INT8 form {MOVEMENT!r} not a candidate: {'; '.join(reasons)}")
    models = {SHARED: model, MOVEMENT: moved}
    from .exporter import settings

    seconds = settings(ctx.request).ov_guard_seconds or guard_seconds(ctx.request)
    device, hint, prec = ctx.request.device or "CPU", runtime["hint"], runtime["inference_precision"]
    # runners closed in reverse order of opening (ExitStack): closing them first-opened-first left
    # this process unable to take a later SIGINT (a segfault in the next raise_signal, found by
    # tests/edgekit/test_safety_out.py's Ctrl-C test after a ShuffleNetV2 export, 2026-12-06)
    with ExitStack() as stack:
        opened = {k: stack.enter_context(OpenVinoRunner(m, src.inputs, src.outputs, device, threads, hint, prec))
                  for k, m in {"fp32": fp32_model, **{k: models[k] for k in passing}}.items()}
        times = time_runners(opened, feeds[0], seconds=seconds * len(opened))
        runner_name = opened[SHARED].name
    # exact moves only: the same values, so a speed tie goes to the faster form, not to a last-bit SQNR
    winner, why = _choose(passing, times, sq if counts["groups"] else {**sq, MOVEMENT: sq[SHARED]})
    for k in passing:
        records[k].update(p50_ms=times[k]["p50_ms"], vs_fp32=paired_ratio(times, k, "fp32")["ratio"])
    ctx.log(f"OpenVINO INT8: delivering {winner!r} ({why})")
    meta.update(form=winner, form_text=FORM_TEXT[winner], forms=list(records.values()),
                chosen={"form": winner, "reason": why + (f"; {MOVEMENT} rejected: {'; '.join(reasons)}"
                                                         if reasons else "")})
    if winner == MOVEMENT and counts["groups"]:
        # a group's roundings differ from the shared graph's (edgekit/verdict.py); quantizers moved up a
        # chain alone are exact, and the form is held to the runtime floor like the shared graph
        meta["fidelity_kind"] = "rewrite"

    guard = guard_record(ctx, times, winner, runner_name, seconds, "IR",
                         extra={"hint": hint, "inference_precision": prec, "form": winner})
    return models[winner], comps[winner], meta, guard


def _choose(passing: list[str], times: dict, sq: dict[str, float]) -> tuple[str, str]:
    from exporters.onnx.quant import choose

    costs = {k: {"sqnr_db_rewrite": sq[k], "sqnr_db_shared": sq[SHARED]} for k in passing}
    return choose(passing, times, costs)
