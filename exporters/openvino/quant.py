"""OpenVINO INT8: the two routes, the accuracy gate, the latency guard.

Q/DQ route (the default, see ``DEFAULT_INT8_ROUTE`` in exporter.py): the pipeline's Q/DQ ONNX
(calibration.quantize_int8), converted as it is: OpenVINO's low-precision transformations turn
its QuantizeLinear/DequantizeLinear pairs into INT8 kernels. The same gate is measured and
reported against an FP32 model converted from PyTorch. Where the graph has concat/shuffle groups
(ShuffleNetV2), a second form moves them on integers, and the faster form that keeps the
accuracy is delivered (exporters/openvino/forms.py, exporters/openvino/movement.py).

NNCF route (``--int8-route nncf``):
1. ``nncf.quantize`` on the FP32 ``openvino.Model`` with the pipeline's calibration Feeds and
   the measured recipe (nncf.RECIPE).
2. Gate: the INT8 model against the FP32 model (both run by OpenVINO at f32) on the held-out
   Feeds, with the pipeline's INT8 tolerance: top-1 agreement when the weights are trained,
   cosine always (``int8_tolerance``).
3. If the gate fails: the most sensitive layers go back to floating point, fewest first,
   until it passes (nncf.restore_ladder); the manifest lists them.

Latency guard: after either route, the INT8 and FP32 models are timed on the export's device,
threads and hint (interleaved rounds, ``--ov-guard-seconds`` each); a warning is raised when
INT8 is not faster, and both figures go into the manifest.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from edgekit.artifact import Artifact
from edgekit.bench.device import int8_saturates
from edgekit.bench.guard import guard_seconds, int8_guard
from edgekit import verdict
from edgekit.compare import Tolerance
from edgekit.contracts import ExportContext
from edgekit.errors import backend_errors, require

from .exporter import settings, wants_paired_weights

from . import nncf as nq
from .runner import OpenVinoRunner



def int8_tolerance(ctx: ExportContext) -> tuple[Tolerance, bool]:
    """(gate tolerance, trained weights): the tolerance the pipeline gives the calibration
    package's INT8 gate (the INT8 parity tolerance with the model's and the user's overrides).
    Untrained (deterministic-init) weights: not assessed (the one policy, edgekit/verdict.py)."""
    trained = verdict.trained_weights(ctx.request)
    return verdict.gate_tolerance(ctx.spec, ctx.request, "int8", trained), trained


def gate_summary(comp) -> dict[str, Any]:
    from calibration.gate import summary

    return summary(comp)


def build_int8(ctx: ExportContext, model, src: Artifact, route: str, runtime: dict[str, Any]):
    """(INT8 ``openvino.Model``, manifest meta) by ``route`` ('nncf' or 'qdq')."""
    threads = ctx.request.threads
    tol, trained = int8_tolerance(ctx)
    opts = settings(ctx.request)
    heldout = list(ctx.heldout_feeds)
    meta: dict[str, Any] = {"route": route, "route_reason": _reason(ctx), "gate_tolerance": tol.to_dict(),
                            "gate_metric": "top-1 agreement and cosine vs FP32" if tol.assessed
                            else f"not assessed: {tol.assessed_note}",
                            "gate_samples": len(heldout)}
    paired = wants_paired_weights(ctx.request)
    meta["weights"] = ("full [-127, 127]" if not paired else "paired: |a| + |b| <= 128 where the kernels add two "
                       "products in 16 bits" if route == "qdq" else "NNCF overflow fix on every layer (7-bit weights)")
    if int8_saturates():
        meta["cpu_without_vnni"] = True
        if paired:
            ctx.log("this x86 CPU has no VNNI: OpenVINO's kernels add pairs of INT8 products in 16-bit lanes here, so "
                    f"the weights are {meta['weights']} and the IR computes exactly (docs/openvino.md)")
        else:
            ctx.warn("this x86 CPU has no VNNI: OpenVINO's INT8 kernels here add products in saturating 16-bit "
                     "lanes, so the IR computes differently here than on a CPU with VNNI (AVX512_VNNI, AVX_VNNI, "
                     "AMX) or on ARM; the parity and fidelity rows are this CPU's (--ov-int8-weights full was asked; "
                     "auto or paired computes exactly here, docs/openvino.md)")
    t0 = time.perf_counter()
    guard = None
    if route == "nncf":
        if not trained and opts.ov_max_fp_fraction:
            # the user forces the fallback on untrained weights: let it judge cosine/SQNR
            tol = replace(tol, assessed=True, top1=None, confident_top1=None)
        fp32_model = model
        recipe = replace(nq.RECIPE, subset_size=opts.nncf_subset_size or nq.RECIPE.subset_size,
                         fast_bias_correction=bool(opts.nncf_fast_bias_correction),
                         overflow_fix="enable" if paired else nq.RECIPE.overflow_fix)
        names = tuple(i.name for i in src.inputs)
        refs = nq.outputs_of(fp32_model, heldout, src.inputs, src.outputs, threads)
        pairs = list(zip(heldout, refs))
        qmodel = nq.quantize(fp32_model, ctx.calib_feeds, names, recipe)
        comp = nq.score(qmodel, pairs, src.inputs, src.outputs, tol, threads)
        meta.update({"nncf": recipe.to_dict(), "gate_before": gate_summary(comp), "restored": []})
        ctx.log(f"NNCF INT8 vs FP32 on {len(pairs)} held-out samples: {nq.brief(comp)}")
        frac = opts.ov_max_fp_fraction
        if not comp.passed and frac is None and not trained:
            ctx.log("gate failed on deterministic-init (untrained) weights: the mixed-precision fallback is "
                    "skipped, it cannot tell how trained weights would quantize (pass --weights or --pretrained, "
                    "or force it with --ov-max-fp-fraction)")
            meta["fallback_skipped"] = "untrained weights"
        elif not comp.passed and frac != 0:
            ctx.log(f"gate failed ({'; '.join(comp.failures)}): restoring the most sensitive layers")
            res = nq.restore_ladder(qmodel, fp32_model, ctx.calib_feeds, pairs, src.inputs, src.outputs, tol,
                                    threads, nq.MAX_FP_FRACTION if frac is None else frac, ctx.log)
            qmodel, comp = res["model"], res["comparison"]
            meta.update({"restored": res["restored"], "ladder": res["steps"],
                         "sensitivity_db": {n: round(g, 3) for n, g in res["ranking"][:max(16, len(res["restored"]))]}})
        nq.compress_weights(qmodel)
        int8_model = qmodel
        meta["gate_after"] = gate_summary(comp)
    else:  # qdq: the Q/DQ ONNX (or its integer-movement form) against the FP32 IR
        from .forms import choose_form

        fp32_model = fp32_reference(ctx, src)
        refs = nq.outputs_of(fp32_model, heldout, src.inputs, src.outputs, threads)
        int8_model, comp, form_meta, guard = choose_form(ctx, model, fp32_model, src, list(zip(heldout, refs)),
                                                         tol, trained, runtime)
        meta.update(form_meta)
        meta["gate_after"] = gate_summary(comp)
        meta["qdq_source"] = {"stage": src.stage, "sha256": src.sha256, **{k: src.meta[k] for k in
                              ("method", "fp_layers", "int8_conv_fraction") if k in src.meta}}
    if not comp.passed:
        ctx.warn(f"OpenVINO INT8 fails its accuracy gate: {'; '.join(comp.failures)}")
    layers = layer_precisions(int8_model)
    meta.update({"fp_layers": layers["fp"], "int8_layers": len(layers["int8"]),
                 "int8_layer_fraction": round(len(layers["int8"]) / max(1, len(layers["int8"]) + len(layers["fp"])), 3),
                 "quantize_seconds": round(time.perf_counter() - t0, 1)})
    if route == "nncf" or guard is None:
        guard = latency_guard(ctx, fp32_model, int8_model, src, runtime)
    meta["latency_guard"] = guard
    return int8_model, meta


def fp32_reference(ctx: ExportContext, src: Artifact):
    """The FP32 IR the INT8 IR is gated and timed against: the one ``--target openvino`` delivers at
    FP32, converted from the export's last FP32 ONNX stage. Without one (a caller that hands the
    target a Q/DQ ONNX alone), the PyTorch module is converted instead. ONNX is the faster source:
    1 s against 6 s for EfficientNet-B0 (``openvino.convert_model`` traces a module with
    torch.export first)."""
    ov = require("openvino", "openvino", "the OpenVINO target")
    fp32 = ctx.fp32_source
    if fp32 is not None and fp32.format == "onnx" and fp32.precision == "fp32" and fp32.path.is_file():
        with backend_errors("openvino", "openvino.convert_model failed on the FP32 ONNX", with_type=False):
            return ov.convert_model(str(fp32.path))
    import torch

    example = tuple(torch.zeros(i.shape) for i in src.inputs)
    with torch.inference_mode():
        return ov.convert_model(ctx.model.eval(), example_input=example[0] if len(example) == 1 else example)


def layer_precisions(model) -> dict[str, list[str]]:
    """Convolution / MatMul layers whose weights are INT8 (or FakeQuantize) vs floating point."""
    ov = require("openvino", "openvino", "the OpenVINO target")
    out: dict[str, list[str]] = {"int8": [], "fp": []}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in nq.LAYER_TYPES:
            continue
        node, quantized = op.input_value(1).get_node(), False
        for _ in range(5):  # Constant(i8) → Convert → [Subtract] → Multiply, or FakeQuantize
            kind = node.get_type_name()
            if kind == "FakeQuantize" or (kind == "Constant" and node.get_element_type() in (ov.Type.i8, ov.Type.u8)):
                quantized = True
                break
            if node.get_input_size() == 0:
                break
            node = node.input_value(0).get_node()
        out["int8" if quantized else "fp"].append(op.get_friendly_name())
    return out


def latency_guard(ctx: ExportContext, fp32_model, int8_model, src: Artifact, runtime: dict[str, Any]) -> dict:
    """Time INT8 against FP32 on the export's device; warn when INT8 is not faster."""
    device, threads = ctx.request.device or "CPU", ctx.request.threads
    seconds = settings(ctx.request).ov_guard_seconds or guard_seconds(ctx.request)
    hint, prec = runtime["hint"], runtime["inference_precision"]
    with OpenVinoRunner(fp32_model, src.inputs, src.outputs, device, threads, hint, prec) as fp32, \
            OpenVinoRunner(int8_model, src.inputs, src.outputs, device, threads, hint, prec) as int8:
        return int8_guard(ctx, fp32, int8, seconds, "IR", extra={"hint": hint, "inference_precision": prec})


def _reason(ctx: ExportContext) -> str:
    asked = settings(ctx.request).int8_route or "auto"
    if asked != "auto":
        return f"--int8-route {asked}"
    return ("default (auto): measured on this project's CPU, the IR read from the shared Q/DQ ONNX is closer to "
            "FP32 than NNCF's on every model measured (pretrained EfficientNet-Lite0: 24.1 against 18.9 dB) and "
            "faster than the FP32 IR; NNCF's IR is 10-25% faster still (--int8-route nncf; docs/openvino.md)")
