"""torch → ONNX, and the ONNX target (its runner: :mod:`exporters.onnx.runner`).

Export uses ``torch.onnx.export(dynamo=True)`` (the TorchScript exporter is
deprecated) into a single file (``external_data=False``), optionally with a symbolic
batch dimension. Every ONNX stage (exported, simplified, FP16, Q/DQ) is run by
:class:`OrtRunner` on ONNX Runtime's CPU provider.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit import signals
from edgekit.artifact import Artifact, tool_versions
from edgekit.bench.device import INT8_WEIGHTS
from edgekit.contracts import ExportContext, Exporter, ExportRequest, Option
from edgekit.errors import ArtifactError, ExportError, UsageError, first_line, require
from edgekit.specs import InputSpec

ORT_FORMS = ("auto", "ort", "ort_float_projections", "shared_qdq")   # quant.FORMS and quant.SHARED

from . import export_cache
from .runner import OrtRunner, ort_providers

DEFAULT_OPSET = 18   # the dynamo exporter's own opset (torch 2.13: TORCHLIB_OPSET)
MIN_OPSET = 7        # the oldest the ONNX version converter adapts to


def supported_opsets() -> range:
    """Opsets ``--opset`` may ask for: up to the installed ``onnx``'s newest. Below
    DEFAULT_OPSET the file is version-converted, which works only when every operator of the
    model has an adapter; the written file is checked either way."""
    onnx = require("onnx", "onnx")
    return range(MIN_OPSET, int(onnx.defs.onnx_opset_version()) + 1)


def check_opset(opset: int | None) -> None:
    """Refuse an opset outside :func:`supported_opsets` before any work (exit 2)."""
    if opset is None:
        return
    ok = supported_opsets()
    if opset not in ok:
        raise UsageError(f"ONNX opset {opset} is not supported: edgekit writes opsets {ok.start}-{ok.stop - 1}",
                         hint=f"use --opset {DEFAULT_OPSET} (the exporter's own; {ok.start}-{DEFAULT_OPSET - 1} only "
                              "where every operator converts)")


def file_opset(model) -> int:
    """The default-domain opset an ONNX model declares."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def node_counts(path_or_model: Any) -> dict[str, int]:
    """Op type → count over the main graph."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path_or_model), load_external_data=False) if isinstance(path_or_model, (str, Path)) \
        else path_or_model
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def load_onnx(path: Path):
    """Load and check an ONNX file; a corrupt file is an ArtifactError, not a traceback."""
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        msg = first_line(exc, None)
        raise ArtifactError(f"{Path(path).name} is not a valid ONNX model: {msg[:200]}") from None
    return model


def export_onnx(model, inputs: tuple[InputSpec, ...], path: Path, opset: int | None = None,
                dynamic_batch: bool = False, output_names: tuple[str, ...] = ("output",)) -> Artifact:
    """Export an eval-mode module to one ONNX file; returns the ``onnx`` stage."""
    import torch

    require("onnxscript", "onnx", "ONNX export")
    onnx = require("onnx", "onnx")
    opset = opset or DEFAULT_OPSET
    args = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    t0 = time.perf_counter()
    model.eval()
    cached = export_cache.entry(model, inputs, opset, dynamic_batch, tuple(output_names))
    hit = cached is not None and export_cache.fetch(cached, path)
    if not hit:
        _export(model, args, path, opset, inputs, output_names, dynamic_shapes)
    seconds = time.perf_counter() - t0
    m = onnx.load(str(path))
    written = file_opset(m)
    if written != opset:  # the exporter fell back to its own opset when conversion failed
        m = _convert_opset(m, opset, written, path)
    if cached is not None and not hit:
        export_cache.put(path, cached)
    outs = tuple(o.name for o in m.graph.output)
    specs = tuple(InputSpec(i.name, i.shape, i.dtype, i.layout, dynamic_batch) for i in inputs)
    meta = {"opset": file_opset(m), "exporter": "torch.onnx.export(dynamo=True)",
            "export_seconds": round(seconds, 2), "nodes": len(m.graph.node),
            "node_counts": node_counts(m), "dynamic_batch": dynamic_batch}
    if cached is not None:
        meta["export_cache"] = "hit" if hit else "stored"
    return Artifact(path=path, stage="onnx", format="onnx", precision="fp32", target="onnx", inputs=specs,
                    outputs=outs, meta=meta, tools=tool_versions(*ONNX_PACKAGES))


def _export(model, args, path: Path, opset: int, inputs, output_names, dynamic_shapes) -> None:
    import torch

    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_torch_onnx():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=True, external_data=False,
                              opset_version=opset, input_names=[i.name for i in inputs],
                              output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                              verbose=False)
    except Exception as exc:
        # Ctrl-C/SIGTERM inside the exporter can come out wrapped, or as a later failure of a
        # half-finished import (AttributeError: torch._dynamo has no 'exc'): an interrupt, not
        # the model's traceability
        signals.check()
        interrupt = signals.interrupt_in(exc)
        if interrupt is not None:
            raise interrupt from None
        cause = exc.__cause__ or exc
        raise ExportError("onnx", f"torch.onnx.export failed: {first_line(exc)}"
                          + (f" (cause: {first_line(cause, 200)})" if cause is not exc else ""),
                          hint="the model must be traceable by torch.export (no data-dependent Python control "
                               "flow); rerun with --debug for the full trace") from exc


def _convert_opset(m, opset: int, written: int, path: Path):
    """Convert ``m`` to ``opset`` with the ONNX version converter and rewrite ``path``, or
    refuse (exit 2): the file must carry the opset the user asked for, and the manifest the
    opset the file carries."""
    onnx = require("onnx", "onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = onnx.version_converter.convert_version(m, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ValueError/...
        why = re.sub(r"^.*Assertion `false` failed:\s*", "", first_line(exc, 300)).replace("$", "")[:160]
        raise UsageError(f"--opset {opset}: the model converts no lower than the exporter's opset {written} "
                         f"(ONNX version converter: {why})",
                         hint=f"use --opset {written} or newer (up to {supported_opsets().stop - 1})") from None
    if file_opset(converted) != opset:
        raise UsageError(f"--opset {opset}: the converted file declares opset {file_opset(converted)}",
                         hint=f"use --opset {written}")
    onnx.save(converted, str(path))
    return converted


@contextlib.contextmanager
def _quiet_torch_onnx():
    """The dynamo exporter logs progress, torchvision-missing notes and, on failure, whole
    graph dumps straight to stderr. Capture file descriptor 2 while it runs; the capture is
    replayed only with EDGEKIT_DEBUG=1 (set by --debug)."""
    names = ["torch.onnx", "torch.onnx._internal.exporter", "onnxscript", "torch.fx", "torch.export",
             "torch._dynamo", "torch._export"]
    saved = [(n, logging.getLogger(n).level) for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for n, lvl in saved:
                logging.getLogger(n).setLevel(lvl)
            if os.environ.get("EDGEKIT_DEBUG") == "1":
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace"))



class OnnxTarget(Exporter):
    """The ONNX file itself is the deployable artifact (ONNX Runtime on any CPU)."""

    name = "onnx"
    aliases = ("onnxruntime", "ort")
    description = "ONNX file, run with ONNX Runtime (CPU); FP16 and INT8 as graph transforms"
    precisions = ("fp32", "fp16", "int8")
    source = "onnx"
    extra = "onnx"
    packages = ONNX_PACKAGES
    options = (
        Option("--ort-int8-weights", "ort_int8_weights", "INT8 weights: paired (each pair of weights ONNX Runtime's "
               "x86 kernels add in 16 bits holds |a| + |b| <= 128, so its fast kernels are exact on CPUs without VNNI "
               "and the artifact needs no session key there), full (exact with VNNI or on ARM; needs "
               "session.x64quantprecision=1 on x86 CPUs without VNNI) or auto (paired for this CPU where it lacks VNNI)",
               choices=INT8_WEIGHTS, default=None),
        Option("--ort-form", "ort_form", "which ONNX Runtime INT8 form to deliver: auto (the fastest that passes "
               "the accuracy rules, timed here), or ort, ort_float_projections or shared_qdq (still judged: one that "
               "fails the accuracy rules is not delivered); a fixed form makes two exports' artifacts comparable",
               choices=ORT_FORMS, default=None),
    )

    def calibration_options_for(self, request: ExportRequest) -> dict:
        """On an x86 CPU without VNNI, ONNX Runtime's fast u8×s8 kernels add pairs of products in
        saturating 16-bit lanes; paired weights keep them exact there (edgekit/ort_options.py), where
        full weights need the session key and its slower exact kernels."""
        from edgekit.bench.device import wants_paired_weights

        paired = wants_paired_weights(self.settings(request).ort_int8_weights, request.device)
        return {**super().calibration_options_for(request), **({"paired_weights": True} if paired else {})}

    def calibration_alternatives(self, request: ExportRequest, trained: bool) -> list[dict]:
        """With trained weights and ``--ort-int8-weights auto`` on a CPU without VNNI, the full
        [-127, 127] calibration too: paired weights keep ONNX Runtime's fast kernels exact but can
        cost float layers, and which runs faster depends on the network (weights_choice.py)."""
        auto = self.settings(request).ort_int8_weights in (None, "auto")
        paired = self.calibration_options_for(request).get("paired_weights")
        return [{"paired_weights": False}] if trained and auto and paired else []

    def faster_calibration(self, calibrations: list, fp32, feeds, request: ExportRequest, log) -> tuple[int, dict]:
        from .weights_choice import choose

        return choose(calibrations, fp32, feeds, request, log)

    def available(self) -> tuple[bool, str]:
        try:
            ort = require("onnxruntime", "onnx")
            require("onnx", "onnx")
            require("onnxscript", "onnx")
        except Exception as exc:
            return False, str(exc)
        return True, f"onnxruntime {ort.__version__}"

    def check(self, request: ExportRequest) -> None:
        super().check(request)
        for mod in ("onnx", "onnxruntime", "onnxscript"):
            require(mod, "onnx", "ONNX export")
        if request.simplify and request.simplifier in ("onnxsim", "onnxslim"):
            require(request.simplifier, "onnx", f"the {request.simplifier} simplifier")

    def builds_artifact(self, request: ExportRequest) -> bool:
        # FP32/FP16: the pipeline's last ONNX stage is the deliverable. INT8: one more stage,
        # the shared Q/DQ graph in the form ONNX Runtime's CPU kernels fuse (quant.py).
        return request.precision == "int8"

    def export(self, ctx: ExportContext, workdir: Path) -> Artifact:
        if ctx.source is None:
            raise ExportError("onnx", "no ONNX stage to deliver")
        if ctx.request.precision != "int8":
            return ctx.source
        from .quant import build

        return build(ctx, workdir)

    def devices(self) -> tuple[str, ...]:
        return ("CPU", "CUDA", "GPU") if "CUDAExecutionProvider" in ort_providers() else ("CPU",)

    # The shared ONNX stages every ONNX-fed target starts from. The pipeline builds them through
    # this target, found in the registry (get_target("onnx")), like any other target's work.
    def check_opset(self, opset: int | None) -> None:
        check_opset(opset)

    def export_source(self, model, inputs: tuple[InputSpec, ...], path: Path, opset: int | None = None,
                      dynamic_batch: bool = False) -> Artifact:
        """torch → ONNX: the ``onnx`` stage (:func:`export_onnx`)."""
        return export_onnx(model, inputs, path, opset=opset, dynamic_batch=dynamic_batch)

    def simplify_source(self, source: Artifact, path: Path, simplifier: str) -> Artifact:
        """The ``simplified`` stage (:mod:`exporters.onnx.simplify`)."""
        from .simplify import simplify

        return simplify(source, path, simplifier)

    def pruned(self, art: Artifact) -> Artifact:
        """``art`` without unused initializers or dangling nodes (:mod:`exporters.onnx.hygiene`)."""
        from .hygiene import pruned

        return pruned(art)

    def open(self, artifact: Artifact, device: str | None = None, **options: Any) -> OrtRunner:
        device = (self.check_device(device) or "CPU").upper()
        if device == "CPU":
            return OrtRunner(artifact.path, artifact.inputs, None, threads=options.get("threads"))
        return OrtRunner(artifact.path, artifact.inputs, None, threads=options.get("threads"),
                         providers=["CUDAExecutionProvider"], name="onnxruntime-cuda")
