"""OpenVINO target: ONNX → OpenVINO IR (``.xml`` + ``.bin``) at FP32, FP16 and INT8.

* FP32: ``openvino.convert_model`` on the simplified ONNX, saved with
  ``save_model(..., compress_to_fp16=False)`` (``save_model`` compresses to FP16 unless told).
* FP16: OpenVINO's own weight compression (``compress_to_fp16=True``) on the FP32 ONNX;
  the target handles this precision itself (see ``handles_precision`` and docs/openvino.md
  for why not the pipeline's FP16 ONNX).
* INT8, two routes (``--int8-route``):
  ``qdq`` — the shared Q/DQ ONNX made by ``calibration.quantize_int8`` (the integers TensorRT
  builds from), read by OpenVINO's low-precision transformations; ``nncf`` —
  ``nncf.quantize`` on the FP32 model with the same calibration Feeds, gated on held-out
  photos, with a mixed-precision fallback when the gate fails (exporters/openvino/quant.py).
  ``auto`` (default) is the route measured best on this project's CPU (DEFAULT_INT8_ROUTE).
  Either way the INT8 IR is then timed against the FP32 IR on the same runtime and a
  warning is raised when it is not faster (the "latency guard"), with both figures in
  the manifest.

The artifact is a folder ``<stem>_openvino/`` holding ``<stem>.xml`` and ``<stem>.bin``,
so the stage's sha256 covers both files.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact, tool_versions
from edgekit.bench.device import INT8_WEIGHTS
from edgekit.contracts import ExportContext, Exporter, ExportRequest, Option
from edgekit.errors import ExportError, MissingDependencyError, UsageError, backend_errors

from .runner import HINTS, INFERENCE_PRECISIONS, OpenVinoRunner, ir_xml, resolve_device

INT8_ROUTES = ("auto", "nncf", "qdq")
# Chosen by measurement on this project's CPU (docs/openvino.md, bench/openvino_int8.py,
# 2026-11-27): on all five models measured, the IR read from the shared Q/DQ ONNX is closer
# to FP32 than NNCF's (pretrained EfficientNet-Lite0: SQNR 24.1 against 18.9 dB) and faster
# than the FP32 IR (1.3-1.6x); NNCF's IR is 10-25% faster still, behind --int8-route nncf.
DEFAULT_INT8_ROUTE = "qdq"
# Arithmetic the CPU plugin uses for the layers that are not INT8 (see runner.py).
RUNTIME_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32"}


class OpenVinoTarget(Exporter):
    name = "openvino"
    aliases = ("ov", "openvino-ir")
    description = "OpenVINO IR (.xml + .bin) for Intel CPUs, iGPUs and NPUs; INT8 through NNCF or Q/DQ"
    precisions = ("fp32", "fp16", "int8")
    source = "onnx"
    extra = "openvino"
    packages = ("openvino", "nncf", "onnx")
    options = (
        Option("--ov-hint", "ov_hint", "OpenVINO performance hint (default latency)", choices=HINTS,
               default=None),
        Option("--int8-route", "int8_route", f"how OpenVINO INT8 is made: nncf (NNCF post-training quantization, "
               f"gated; the fastest IR), qdq (the shared Q/DQ ONNX that TensorRT also builds from; the most accurate) "
               f"or auto (= {DEFAULT_INT8_ROUTE}, measured here)",
               choices=INT8_ROUTES, default=None),
        Option("--ov-inference-precision", "ov_inference_precision",
               "arithmetic of the non-INT8 layers on CPU/GPU (default f32: bf16 is the CPU plugin's own default "
               "on AMX CPUs and costs accuracy)", choices=INFERENCE_PRECISIONS, default=None),
        Option("--nncf-subset-size", "nncf_subset_size", "calibration samples NNCF uses (default 300, capped by "
               "the calibration feeds)", type=int, default=None),
        Option("--nncf-fast-bias-correction", "nncf_fast_bias_correction", "NNCF's fast bias correction instead "
               "of the full one (quicker export, less accurate INT8)", type=None, default=False,
               action="store_true"),
        Option("--ov-max-fp-fraction", "ov_max_fp_fraction", "when NNCF INT8 fails the accuracy gate, at most "
               "this share of the quantized layers goes back to floating point (default 0.25; 0 disables)",
               type=float, default=None),
        Option("--ov-int8-weights", "ov_int8_weights", "INT8 weights of the Q/DQ route: paired (each pair of weights "
               "the CPU kernels add in 16 bits holds |a| + |b| <= 128: exact on x86 CPUs without VNNI too, for IRs "
               "deployed there), full (exact with VNNI/AMX or on ARM) or auto (paired for this CPU where it lacks VNNI)",
               choices=INT8_WEIGHTS, default=None),
        Option("--ov-guard-seconds", "ov_guard_seconds", "seconds the INT8-vs-FP32 latency guard times each IR "
               "(default 1.5)", type=float, default=None),
    )

    def calibration_options_for(self, request: ExportRequest) -> dict:
        """On an x86 CPU without VNNI, OpenVINO's u8×s8 kernels add pairs of products in saturating
        16-bit lanes: the shared graph's weights are then calibrated with every such pair held to
        calibration.qdq.PAIR_BUDGET, so that the IR computes exactly there (``--ov-int8-weights``,
        docs/openvino.md)."""
        return {**super().calibration_options_for(request),
                **({"paired_weights": True} if wants_paired_weights(request) else {})}

    # -- availability ------------------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        try:
            ov = _openvino()
        except MissingDependencyError as exc:
            return False, str(exc)
        return True, f"openvino {ov.__version__} ({', '.join(ov.Core().available_devices) or 'no devices'})"

    def check(self, request: ExportRequest) -> None:
        super().check(request)
        opts = self.settings(request)
        route = self.int8_route(request)
        if opts.int8_route not in (None, "auto") and request.precision != "int8":
            raise UsageError(f"--int8-route applies to INT8 exports, not {request.precision}", hint="add --int8")
        if opts.nncf_subset_size is not None and opts.nncf_subset_size < 1:
            raise UsageError(f"--nncf-subset-size must be at least 1, got {opts.nncf_subset_size}")
        if opts.ov_guard_seconds is not None and not opts.ov_guard_seconds > 0:
            raise UsageError(f"--ov-guard-seconds must be > 0, got {opts.ov_guard_seconds}")
        frac = opts.ov_max_fp_fraction
        if frac is not None and not 0 <= frac <= 1:
            raise UsageError(f"--ov-max-fp-fraction must be between 0 and 1, got {frac}")
        if request.threads is not None and request.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {request.threads}")
        _openvino()
        resolve_device(request.device)  # before any work: names the devices that are present
        if request.precision == "int8" and route == "nncf" and not request.dry_run:
            from edgekit.errors import require

            require("nncf", "openvino", "OpenVINO INT8 (NNCF)")

    def int8_route(self, request: ExportRequest) -> str:
        route = self.settings(request).int8_route or "auto"
        if route not in INT8_ROUTES:
            raise UsageError(f"unknown --int8-route '{route}'", hint=f"choose one of {', '.join(INT8_ROUTES)}")
        return DEFAULT_INT8_ROUTE if route == "auto" else route

    def handles_precision(self, request: ExportRequest) -> bool:
        """FP16: OpenVINO's own weight compression of the FP32 model (True). INT8: True for
        the NNCF route (it quantizes the FP32 model itself), False for the Q/DQ route."""
        if request.precision == "fp16":
            return True
        if request.precision == "int8":
            return self.int8_route(request) == "nncf"
        return False

    # -- build -------------------------------------------------------------------------------
    def export(self, ctx: ExportContext, workdir: Path) -> Artifact:
        ov = _openvino()
        src, request = ctx.source, ctx.request
        if src is None or src.format != "onnx":
            raise ExportError("openvino", "no ONNX stage to convert")
        precision = request.precision
        folder = Path(workdir) / f"{ctx.stem}_openvino"
        folder.mkdir(parents=True, exist_ok=True)
        xml = folder / f"{ctx.stem}.xml"
        t0 = time.perf_counter()
        with backend_errors("openvino", "openvino.convert_model failed", with_type=False):
            model = ov.convert_model(str(src.path))
        convert_s = time.perf_counter() - t0
        meta: dict[str, Any] = {"source": src.stage, "source_precision": src.precision,
                                "convert_seconds": round(convert_s, 2)}
        opts = self.settings(request)
        runtime = {"hint": opts.ov_hint or "latency",
                   "inference_precision": opts.ov_inference_precision
                   or RUNTIME_PRECISION[precision]}
        if precision == "int8":
            from .quant import build_int8

            model, int8_meta = build_int8(ctx, model, src, self.int8_route(request), runtime)
            meta["int8"] = int8_meta
            if int8_meta.get("fidelity_kind"):  # a rewritten form (forms.py): held to the rewrite floor
                meta["fidelity_kind"] = int8_meta["fidelity_kind"]
        if precision == "fp16":
            meta["fp16"] = ("weights compressed to FP16 by openvino.save_model(compress_to_fp16=True); "
                            "compute precision is the device's (inference_precision)")
        with backend_errors("openvino", "openvino.save_model failed", hint=None, with_type=False):
            ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
        meta.update({"xml": xml.name, "bin": xml.with_suffix(".bin").name, "runtime": runtime,
                     "seconds": round(time.perf_counter() - t0, 2), "ops": _op_counts(model)})
        return Artifact(path=folder, stage="openvino", format="openvino-ir", precision=precision, target=self.name,
                        inputs=src.inputs, outputs=src.outputs, parent=src.sha256, meta=meta,
                        tools=tool_versions(*self.packages))

    def check_device(self, device: str | None) -> str | None:
        # GPU matches GPU.0, AUTO/HETERO/MULTI need their parts present; names the available ones
        return resolve_device(device) if device is not None else None

    def open(self, artifact: Artifact, device: str | None = None, **options: Any) -> OpenVinoRunner:
        runtime = artifact.meta.get("runtime", {}) if artifact.format == "openvino-ir" else {}
        return OpenVinoRunner(ir_xml(artifact.path) if artifact.path.is_dir() else artifact.path,
                              artifact.inputs, artifact.outputs, device=device, threads=options.get("threads"),
                              hint=options.get("hint") or options.get("ov_hint") or runtime.get("hint", "latency"),
                              inference_precision=options.get("inference_precision")
                              or options.get("ov_inference_precision")
                              or runtime.get("inference_precision", RUNTIME_PRECISION.get(artifact.precision)))


def _openvino():
    from edgekit.errors import require

    return require("openvino", "openvino", "the OpenVINO target")


def _op_counts(model) -> dict[str, int]:
    from collections import Counter

    skip = {"Parameter", "Result", "Constant"}
    return dict(Counter(op.get_type_name() for op in model.get_ops() if op.get_type_name() not in skip)
                .most_common())



def wants_paired_weights(request: ExportRequest) -> bool:
    """Whether the weights are calibrated to the pair budget: ``--ov-int8-weights`` (auto: this CPU
    saturates and the IR is for its CPU plugin, not a GPU or NPU)."""
    from edgekit.bench import device

    return device.wants_paired_weights(settings(request).ov_int8_weights, request.device)


def settings(request: ExportRequest):
    """The OpenVINO options of ``request`` as a typed record (:meth:`Exporter.settings`)."""
    return OpenVinoTarget().settings(request)
