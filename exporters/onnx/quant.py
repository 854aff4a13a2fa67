"""INT8 for the ``onnx`` target: the shared calibration, encoded for ONNX Runtime's CPU kernels.

The pipeline's Q/DQ stage (``calibration.quantize_int8``) has TensorRT's form, which ONNX
Runtime executes as dequantize + float convolution: slower than FP32 (MobileNetV3-Large on
this project's CPU: 16.4 ms against 4.9 ms). The ``onnx`` target therefore delivers one more
stage, ``ort``: the same weights, biases, ranges and float layers, rewritten by
:mod:`exporters.onnx.ort_form` so that ONNX Runtime fuses the convolutions into QLinearConv and
runs the activations between them on its uint8 kernels.

Which form is delivered is measured, not assumed (issue 20). Every form in :data:`FORMS` is
built from the same calibration; each is scored against the shared graph on the held-out feeds
(on trained weights a form that costs more than ``edgekit.verdict.REWRITE_MAX_COST_DB`` is not a
candidate, and on any weights a form below the parity verdict's fidelity floor is not); the
candidates that pass, the shared Q/DQ graph among them, are timed interleaved
with each other and with the FP32 ONNX on this machine and the export's thread count, and the
fastest is delivered (ties within :data:`SPEED_TIE` go to the one closer to FP32). The manifest
lists every candidate with its cost and latency and says why the winner won; the INT8-vs-FP32
latency guard is read from the same interleaved run.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgekit import ort_options
from edgekit.artifact import Artifact, tool_versions
from edgekit.bench.guard import guard_record, int8_guard
from edgekit.bench.guard import guard_seconds as request_guard_seconds
from edgekit.bench.timing import paired_ratio, time_runners
from edgekit.contracts import ExportContext
from edgekit.errors import ExportError

# The ONNX Runtime forms built from the calibration (exporters.onnx.ort_form.to_ort_form's
# linear_pairs): with a uint8 pair on every conv output; without one on projections that have no
# activation (pretrained EfficientNet-Lite0: 0.21 instead of 0.54 dB below the shared graph, 24 %
# slower on one CPU). The shared Q/DQ graph itself is the third candidate.
FORMS = (("ort", True), ("ort_float_projections", False))
SHARED = "shared_qdq"
# candidates whose latency is within this fraction of the fastest count as equally fast: the one
# closer to FP32 wins (a 3 % gap is inside what interleaved rounds resolve on a busy machine)
SPEED_TIE = 0.03


def build(ctx: ExportContext, workdir: Path) -> Artifact:
    """Build every candidate form, judge each against the shared graph (accuracy), time the ones
    that pass interleaved with each other and with FP32 on this machine, deliver the fastest."""
    import tempfile

    from exporters.onnx.ort_form import build_ort_int8

    from .exporter import ONNX_PACKAGES, OnnxTarget, node_counts
    from .hygiene import prune

    qdq = ctx.source
    if qdq is None or qdq.precision != "int8":
        raise ExportError("onnx", "the ONNX Runtime INT8 form needs the pipeline's Q/DQ stage")
    if ctx.calib_feeds is None:
        raise ExportError("onnx", "the ONNX Runtime INT8 form needs calibration feeds")
    path = Path(workdir) / f"{ctx.stem}.ort.int8.onnx"
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="edgekit-ort-forms-"))
    try:
        paths, rewrites = {}, {}
        for label, linear_pairs in FORMS:
            paths[label] = scratch / f"{label}.onnx"
            form = build_ort_int8(qdq.path, paths[label], ctx.calib_feeds, linear_pairs=linear_pairs)
            rewrites[label] = {**form, "hygiene": prune(paths[label])}
        paths[SHARED] = qdq.path
        costs = rewrite_costs(ctx, qdq.path, {k: v for k, v in paths.items() if k != SHARED})
        passing = [k for k in paths if k == SHARED or costs is None or not costs[k]["rejected"]]
        for k in paths:
            if k not in passing:
                ctx.log(f"ONNX Runtime INT8 form {k!r} not a candidate: {costs[k]['reason']}")
        times = _time_candidates(ctx, {k: paths[k] for k in passing})
        winner, why = choose(passing, times, costs)
        asked = OnnxTarget().settings(ctx.request).ort_form
        if asked not in (None, "auto"):
            if asked in passing:
                winner, why = asked, f"--ort-form {asked}"
            else:
                ctx.warn(f"--ort-form {asked}: that form fails the accuracy rules; delivering {winner!r} ({why})")
        shutil.copyfile(paths[winner], path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    candidates = [_candidate_record(k, costs, times, k in passing) for k in paths]
    ctx.log(f"ONNX Runtime INT8: delivering {winner!r} ({why})")
    meta = {"form": FORM_TEXT[winner], "derived_from": qdq.path.name, "rewrite": rewrites.get(winner),
            "seconds": round(time.perf_counter() - t0, 2), "node_counts": node_counts(path),
            "float_layers": qdq.meta.get("float_layers", []),
            "calibration_gate": qdq.meta.get("gate", {}).get("after"), "candidates": candidates,
            "chosen": {"form": winner, "reason": why},
            # what a deployment's SessionOptions need (edgekit.ort_options): exact integer kernels on
            # x86 CPUs without VNNI, where the default ones saturate; nothing when the weights are paired
            "session_config": ort_options.session_config(path)}
    if costs is not None:
        meta["rewrite_cost"] = costs.get(winner) or costs[FORMS[0][0]]
    if winner == SHARED:
        meta["fidelity_kind"] = "runtime"
        if len(passing) == 1:  # every rewrite cost accuracy
            rejected = "; ".join(f"{k}: {costs[k]['reason']}" for k in paths if k != SHARED)
            meta["rewrite_rejected"] = rejected
            ctx.warn(f"ONNX Runtime INT8 form not delivered ({rejected}); {path.name} holds the shared "
                     f"Q/DQ graph (slower on ONNX Runtime's CPU kernels, see the latency guard)")
    from .exporter import OrtRunner

    art = Artifact(path=path, stage="ort", format="onnx", precision="int8", target="onnx", inputs=qdq.inputs,
                   outputs=qdq.outputs, parent=qdq.sha256, meta=meta, tools=tool_versions(*ONNX_PACKAGES))
    if times is not None:
        meta["latency_guard"] = guard_record(ctx, times, winner, "onnxruntime", guard_seconds(ctx), "ONNX",
                                             advice=GUARD_ADVICE)
    elif ctx.fp32_source is not None:
        meta["latency_guard"] = latency_guard(ctx, ctx.fp32_source, art, OrtRunner)
    return art


FORM_TEXT = {
    "ort": "onnxruntime QDQ (uint8 activations, int8 per-channel weights, quantized conv and activation outputs)",
    "ort_float_projections": "onnxruntime QDQ (uint8 activations, int8 per-channel weights, quantized conv and "
                             "activation outputs); projections without an activation stay float convolutions",
    SHARED: "the shared Q/DQ graph (no ONNX Runtime rewrite delivered)",
}
GUARD_ADVICE = "; for INT8 speed on this CPU use --target openvino"


def guard_seconds(ctx: ExportContext) -> float:
    """Seconds each runner is timed (:func:`edgekit.bench.guard.guard_seconds`)."""
    return request_guard_seconds(ctx.request)


def _time_candidates(ctx: ExportContext, paths: dict[str, Path]) -> dict | None:
    """Every candidate and the FP32 ONNX, interleaved in one :func:`time_runners` run on the export's
    thread count; None without an FP32 source or held-out feeds."""
    if ctx.fp32_source is None or ctx.heldout_feeds is None:
        return None
    return time_against_fp32(ctx.fp32_source, paths, next(iter(ctx.heldout_feeds)), ctx.request.threads,
                             guard_seconds(ctx))


def time_against_fp32(fp32: Artifact, paths: dict[str, Path], feed, threads: int | None, seconds: float) -> dict:
    """``fp32`` (as ``"fp32"``) and every ONNX in ``paths``, each opened by OrtRunner with the session
    config its weights need, timed interleaved for ``seconds`` each (:func:`time_runners`)."""
    from contextlib import ExitStack

    from .exporter import OrtRunner

    runners = {"fp32": fp32.path, **paths}
    with ExitStack() as stack:
        opened = {k: stack.enter_context(OrtRunner(Path(p), fp32.inputs, threads=threads))
                  for k, p in runners.items()}
        return time_runners(opened, feed, seconds=seconds * len(runners))


def choose(passing: list[str], times: dict | None, costs: dict | None) -> tuple[str, str]:
    """(winner, why) among the forms that pass the accuracy rule: the fastest against FP32 (the
    median of per-round ratios); among those within :data:`SPEED_TIE` of it, the closest to FP32.
    Without timings, the first passing form in :data:`FORMS` order."""
    if times is None:
        return passing[0], "first passing form (no FP32 source to time against)"
    ratio = {k: paired_ratio(times, k, "fp32")["ratio"] for k in passing}
    best = min(ratio.values())
    near = [k for k in passing if ratio[k] <= best * (1 + SPEED_TIE)]
    sqnr = {k: (costs[k]["sqnr_db_rewrite"] if costs and k in costs else
                (next(iter(costs.values()))["sqnr_db_shared"] if costs else 0.0)) for k in near}
    winner = max(near, key=lambda k: (sqnr[k], -ratio[k]))
    others = ", ".join(f"{k} {ratio[k]:.2f}x" for k in passing if k != winner)
    why = (f"fastest passing form: {ratio[winner]:.2f}x FP32's latency" if len(near) == 1 else
           f"within {SPEED_TIE:.0%} of the fastest and closest to FP32 ({sqnr[winner]:.2f} dB): "
           f"{ratio[winner]:.2f}x FP32's latency")
    return winner, why + (f"; others {others}" if others else "")


def _candidate_record(k: str, costs: dict | None, times: dict | None, passing: bool) -> dict:
    rec: dict = {"form": k, "accuracy_passed": passing}
    if costs and k in costs:
        rec.update(cost_db=costs[k]["cost_db"], sqnr_db=costs[k]["sqnr_db_rewrite"])
    if times is not None and k in times:
        rec.update(p50_ms=times[k]["p50_ms"], vs_fp32=paired_ratio(times, k, "fp32")["ratio"])
    return rec


def rewrite_cost(ctx: ExportContext, qdq: Path, form: Path) -> dict | None:
    """SQNR against the FP32 ONNX of the shared graph and of the rewrite on the held-out feeds;
    with trained weights the rewrite is rejected when it costs more than
    ``edgekit.verdict.REWRITE_MAX_COST_DB``. None without an FP32 source or held-out feeds."""
    costs = rewrite_costs(ctx, qdq, {"ort": form})
    return None if costs is None else costs["ort"]


def rewrite_costs(ctx: ExportContext, qdq: Path, forms: dict[str, Path]) -> dict[str, dict] | None:
    """:func:`rewrite_cost` of several rewrites of ``qdq``, running FP32 and the shared graph once."""
    import numpy as np

    from edgekit import verdict
    from edgekit.compare import OutputScore

    from .runner import OrtRunner

    if ctx.fp32_source is None or ctx.heldout_feeds is None:
        return None
    feeds = list(ctx.heldout_feeds)
    outs = {}
    for key, p in (("fp32", ctx.fp32_source.path), ("qdq", qdq), *forms.items()):
        with OrtRunner(Path(p), ctx.fp32_source.inputs) as r:
            outs[key] = [next(iter(r.infer(f).values())) for f in feeds]

    def sqnr(ref_key: str, key: str) -> float:
        s = OutputScore("output")
        for ref, out in zip(outs[ref_key], outs[key]):
            s.add(ref, out)
        return s.sqnr_db

    sq = {key: sqnr("fp32", key) for key in ("qdq", *forms)}
    trained = bool(getattr(ctx, "trained", None)) if getattr(ctx, "trained", None) is not None \
        else verdict.trained_weights(ctx.request)
    # the parity verdict's fidelity floor for a rewrite, which holds for any weights: a form below it
    # would be delivered and then fail the export's own fidelity row (docs/calibration.md)
    floor = verdict.fidelity_tolerance("int8", rewrite=True, reference_sqnr_db=sq["qdq"]).sqnr_db
    result = {}
    for key in forms:
        cost = sq["qdq"] - sq[key]
        fidelity = sqnr("qdq", key)
        too_costly = bool(trained and np.isfinite(cost) and cost > verdict.REWRITE_MAX_COST_DB)
        unfaithful = bool(fidelity < floor)
        reason = (f"it costs {cost:.2f} dB SQNR against FP32 ({sq[key]:.2f} dB, the shared graph {sq['qdq']:.2f} "
                  f"dB; at most {verdict.REWRITE_MAX_COST_DB} dB allowed on trained weights)")
        if unfaithful:
            reason = (f"{reason}; " if too_costly else "") + (
                      f"it is {fidelity:.2f} dB from the shared graph, below the fidelity floor of {floor:g} dB "
                      f"(min({verdict.FIDELITY_REWRITE_MAX_DB:g}, the shared graph's {sq['qdq']:.2f} dB vs FP32 "
                      f"− {verdict.FIDELITY_REWRITE_MARGIN_DB:g}))")
        result[key] = {"sqnr_db_shared": round(float(sq["qdq"]), 3), "sqnr_db_rewrite": round(float(sq[key]), 3),
                       "cost_db": round(float(cost), 3), "limit_db": verdict.REWRITE_MAX_COST_DB,
                       "fidelity_db": round(float(fidelity), 3), "fidelity_floor_db": floor,
                       "trained_weights": trained, "rejected": too_costly or unfaithful, "reason": reason,
                       "samples": len(feeds)}
    return result


def latency_guard(ctx: ExportContext, fp32: Artifact, int8: Artifact, runner_cls) -> dict:
    """Time INT8 against FP32 on ONNX Runtime; warn when INT8 is not faster."""
    threads = ctx.request.threads
    with runner_cls(fp32.path, fp32.inputs, threads=threads) as a, \
            runner_cls(int8.path, int8.inputs, threads=threads) as b:
        return int8_guard(ctx, a, b, guard_seconds(ctx), "ONNX", advice=GUARD_ADVICE)
