"""INT8 for the ``onnx`` target: the shared calibration, encoded for ONNX Runtime's CPU kernels.

The pipeline's Q/DQ stage (``calibration.quantize_int8``) has TensorRT's form, which ONNX
Runtime executes as dequantize + float convolution: slower than FP32 (MobileNetV3-Large on
this project's CPU: 16.4 ms against 4.9 ms). The ``onnx`` target therefore delivers one more
stage, ``ort``: the same weights, biases, ranges and float layers, rewritten by
:mod:`exporters.onnx.ort_form` so that ONNX Runtime fuses the convolutions into QLinearConv and
runs the activations between them on its uint8 kernels.

Latency guard: the ``ort`` stage and the FP32 source are timed in interleaved rounds on the
export's thread count; both figures go into the manifest and a warning is raised when INT8
is not faster (what ONNX Runtime gains from INT8 depends on the CPU and the network: on this
x86 CPU MobileNetV3-Large gains 1.1×, EfficientNet-B0's SiLU keeps it at 0.9×).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgekit.artifact import Artifact, tool_versions
from edgekit.bench.guard import int8_guard
from edgekit.contracts import ExportContext
from edgekit.errors import ExportError

GUARD_SECONDS = 1.5
# the ONNX Runtime forms tried, fastest first (exporters.onnx.ort_form.to_ort_form's linear_pairs):
# with pairs on every conv output; without them on projections that have no activation
# (pretrained EfficientNet-Lite0: 0.21 instead of 0.54 dB below the shared graph, 24 % slower,
# still faster than FP32)
LINEAR_PAIRS_CANDIDATES = (True, False)


def build(ctx: ExportContext, workdir: Path) -> Artifact:
    from exporters.onnx.ort_form import build_ort_int8

    from .exporter import ONNX_PACKAGES, OrtRunner, node_counts

    qdq = ctx.source
    if qdq is None or qdq.precision != "int8":
        raise ExportError("onnx", "the ONNX Runtime INT8 form needs the pipeline's Q/DQ stage")
    if ctx.calib_feeds is None:
        raise ExportError("onnx", "the ONNX Runtime INT8 form needs calibration feeds")
    path = Path(workdir) / f"{ctx.stem}.ort.int8.onnx"
    t0 = time.perf_counter()
    from .hygiene import prune

    # Candidates, fastest first; the first whose cost against the shared graph is within
    # REWRITE_MAX_COST_DB (trained weights) is delivered, else the shared graph itself.
    tried = []
    for linear_pairs in LINEAR_PAIRS_CANDIDATES:
        form = build_ort_int8(qdq.path, path, ctx.calib_feeds, linear_pairs=linear_pairs)
        form = {**form, "hygiene": prune(path)} if isinstance(form, dict) else form
        cost = rewrite_cost(ctx, qdq.path, path)
        tried.append({"linear_pairs": linear_pairs, **({"cost_db": cost["cost_db"], "rejected": cost["rejected"]}
                                                        if cost else {})})
        if cost is None or not cost["rejected"]:
            break
        ctx.log(f"ONNX Runtime INT8 form with linear_pairs={linear_pairs}: {cost['reason']}; trying the next form")
    meta = {"form": "onnxruntime QDQ (uint8 activations, int8 per-channel weights, quantized conv and "
                    "activation outputs)" + ("" if form.get("linear_pairs", True) else
                                             "; projections without an activation stay float convolutions"),
            "derived_from": qdq.path.name, "rewrite": form, "seconds": round(time.perf_counter() - t0, 2),
            "node_counts": node_counts(path), "float_layers": qdq.meta.get("float_layers", []),
            "calibration_gate": qdq.meta.get("gate", {}).get("after"), "candidates": tried}
    if cost is not None:
        meta["rewrite_cost"] = cost
        if cost["rejected"]:
            # item 2 of issue 19: a rewrite that costs accuracy is not delivered
            shutil.copyfile(qdq.path, path)
            meta.update({"form": "the shared Q/DQ graph (the ONNX Runtime rewrite was not delivered)",
                         "fidelity_kind": "runtime", "rewrite_rejected": cost["reason"]})
            ctx.warn(f"ONNX Runtime INT8 form not delivered: {cost['reason']}; {path.name} holds the shared "
                     f"Q/DQ graph (slower on ONNX Runtime's CPU kernels, see the latency guard)")
    art = Artifact(path=path, stage="ort", format="onnx", precision="int8", target="onnx", inputs=qdq.inputs,
                   outputs=qdq.outputs, parent=qdq.sha256, meta=meta, tools=tool_versions(*ONNX_PACKAGES))
    if ctx.fp32_source is not None:
        meta["latency_guard"] = latency_guard(ctx, ctx.fp32_source, art, OrtRunner)
    return art


def rewrite_cost(ctx: ExportContext, qdq: Path, form: Path) -> dict | None:
    """SQNR against the FP32 ONNX of the shared graph and of the rewrite on the held-out feeds;
    with trained weights the rewrite is rejected when it costs more than
    ``edgekit.verdict.REWRITE_MAX_COST_DB``. None without an FP32 source or held-out feeds."""
    import numpy as np

    from edgekit import verdict
    from edgekit.compare import OutputScore

    from .runner import OrtRunner

    if ctx.fp32_source is None or ctx.heldout_feeds is None:
        return None
    feeds = list(ctx.heldout_feeds)
    outs = {}
    for key, p in (("fp32", ctx.fp32_source.path), ("qdq", qdq), ("ort", form)):
        with OrtRunner(Path(p), ctx.fp32_source.inputs) as r:
            outs[key] = [next(iter(r.infer(f).values())) for f in feeds]
    sq = {}
    for key in ("qdq", "ort"):
        s = OutputScore("output")
        for ref, out in zip(outs["fp32"], outs[key]):
            s.add(ref, out)
        sq[key] = s.sqnr_db
    cost = sq["qdq"] - sq["ort"]
    trained = bool(getattr(ctx, "trained", None)) if getattr(ctx, "trained", None) is not None \
        else verdict.trained_weights(ctx.request)
    rejected = bool(trained and np.isfinite(cost) and cost > verdict.REWRITE_MAX_COST_DB)
    reason = (f"it costs {cost:.2f} dB SQNR against FP32 ({sq['ort']:.2f} dB, the shared graph {sq['qdq']:.2f} dB; "
              f"at most {verdict.REWRITE_MAX_COST_DB} dB allowed on trained weights)")
    return {"sqnr_db_shared": round(float(sq["qdq"]), 3), "sqnr_db_rewrite": round(float(sq["ort"]), 3),
            "cost_db": round(float(cost), 3), "limit_db": verdict.REWRITE_MAX_COST_DB, "trained_weights": trained,
            "rejected": rejected, "reason": reason, "samples": len(feeds)}


def latency_guard(ctx: ExportContext, fp32: Artifact, int8: Artifact, runner_cls) -> dict:
    """Time INT8 against FP32 on ONNX Runtime; warn when INT8 is not faster."""
    threads = ctx.request.threads
    with runner_cls(fp32.path, fp32.inputs, threads=threads) as a, \
            runner_cls(int8.path, int8.inputs, threads=threads) as b:
        return int8_guard(ctx, a, b, GUARD_SECONDS, "ONNX", advice="; for INT8 speed on this CPU use --target openvino")
