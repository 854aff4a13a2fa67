"""PyTorch → Core ML ML Program (``.mlpackage``): capture, (quantize), convert, save.

INT8 lives in :mod:`exporters.coreml.quant`.

What this relies on (coremltools 9.0 docs, read with the docs search; the installed
package's API reference says the same):

* Conversion — "Unified Conversion API" / ``coremltools.convert``
  (https://apple.github.io/coremltools/source/coremltools.converters.convert.html):
  a ``torch.jit.trace`` module, ``inputs=[TensorType(name, shape, dtype)]``,
  ``convert_to="mlprogram"``, ``compute_precision`` (``precision.FLOAT32`` /
  ``FLOAT16``), ``minimum_deployment_target``, ``skip_model_load`` (no compile off macOS).
* "Model Input and Output Types" (docs-guides/source/model-input-and-output-types.html):
  since coremltools 7 the default I/O type of an iOS16+ ML Program is fp16, so the
  types are pinned to fp32 here — every runner then takes and returns float32 tensors.
  ``ImageType(scale, bias, color_layout)`` adds the scaling to the program itself.
* "Model Exporting" (docs-guides/source/model-exporting.html): ``torch.export`` programs
  convert too (beta since coremltools 8), after ``run_decompositions``.
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.contracts import Feeds
from edgekit.errors import ExportError, UsageError, first_line
from edgekit.specs import InputSpec

from .quant import quantize_w8a8, quantize_weights
from .mil.quiet import import_coremltools, quiet_logs

DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
INT8_MODES = ("w8a8", "w8")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
DEFAULT_CALIB_SAMPLES = 128
# "auto": TorchScript trace first (coremltools' mature path), torch.export when the trace
# frontend fails (e.g. coremltools 9's aten::Int on torch 2.13 traces of x.shape arithmetic)
FRONTENDS = ("auto", "trace", "export")
FRONTEND_STEP = {"trace": "torch.jit.trace", "export": "torch.export.export"}
_LEVEL = {"iOS15": 0, "macOS12": 0, "iOS16": 1, "macOS13": 1, "iOS17": 2, "macOS14": 2, "iOS18": 3, "macOS15": 3}
QUIET = ("coremltools", "torch.jit", "torch.fx", "torch.ao", "root")


def deployment_target(precision: str, int8_mode: str | None, asked: str | None) -> str:
    """The asked target, or the oldest one the program's ops need (W8A8 needs iOS17)."""
    needs = "iOS17" if precision == "int8" and (int8_mode or "w8a8") == "w8a8" else "iOS16"
    if asked is None:
        return needs
    if asked not in _LEVEL:
        raise UsageError(f"unknown --min-deployment-target '{asked}'",
                         hint=f"choose one of {', '.join(DEPLOYMENT_TARGETS)}")
    if _LEVEL[asked] < _LEVEL[needs]:
        raise UsageError(f"--min-deployment-target {asked} is too old for {precision}"
                         + (f" ({int8_mode})" if precision == "int8" else ""),
                         hint=f"activation quantization ops need {needs} / macOS14 or newer")
    return asked


class Normalize:
    """``--image-input``: the model takes 0-1 pixels (the ImageType scales 0-255 by 1/255)
    and subtracts the mean / divides by the std per channel itself."""

    @staticmethod
    def wrap(model, mean: Sequence[float], std: Sequence[float]):
        import torch
        from torch import nn

        class _Normalized(nn.Module):
            def __init__(self, inner: nn.Module):
                super().__init__()
                self.inner = inner
                self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
                self.register_buffer("inv_std", 1.0 / torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

            def forward(self, x):
                return self.inner((x - self.mean) * self.inv_std)

        return _Normalized(model).eval()


def example_inputs(inputs: tuple[InputSpec, ...]):
    import torch

    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(i.shape, generator=gen) for i in inputs)


def capture(model, args, frontend: str):
    """The module as coremltools' torch frontend takes it: a TorchScript trace or an
    ``ExportedProgram`` (coremltools "Model Exporting" guide: torch.export support is
    beta since coremltools 8; ``run_decompositions({})`` lowers to core ATen)."""
    import torch

    with torch.no_grad(), quiet_logs(*QUIET, "torch.export", "torch._export", "torch._dynamo"):
        if frontend == "export":
            return torch.export.export(model.eval(), args).run_decompositions({})
        return torch.jit.trace(model.eval(), args, check_trace=False)


def convert(traced, inputs: tuple[InputSpec, ...], outputs: Sequence[str], precision: str, target: str,
            image: dict[str, Any] | None = None):
    """``coremltools.convert`` to an ML Program; returns the (unloaded) MLModel."""
    ct = import_coremltools()
    from . import compat as coreml_compat

    coreml_compat.install()
    if image:
        color = ct.colorlayout.GRAYSCALE if inputs[0].shape[1] == 1 else ct.colorlayout.RGB
        ins = [ct.ImageType(name=inputs[0].name, shape=inputs[0].shape, scale=1 / 255.0, color_layout=color)]
    else:
        ins = [ct.TensorType(name=i.name, shape=i.shape, dtype=np.float32) for i in inputs]
    outs = [ct.TensorType(name=o, dtype=np.float32) for o in outputs]
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    with quiet_logs(*QUIET), contextlib.redirect_stderr(io.StringIO()):  # tqdm progress bars
        return ct.convert(traced, source="pytorch", inputs=ins, outputs=outs, convert_to="mlprogram",
                          compute_precision=compute, minimum_deployment_target=getattr(ct.target, target),
                          skip_model_load=True)


def build_package(model, inputs: tuple[InputSpec, ...], outputs: Sequence[str], path: Path, precision: str,
                  target: str, int8_mode: str = "w8a8", calib: Feeds | None = None,
                  image: dict[str, Any] | None = None, calib_samples: int = DEFAULT_CALIB_SAMPLES,
                  frontend: str = "auto", layers: dict | None = None) -> tuple[dict[str, Any], Any]:
    """Write ``path`` (an .mlpackage); returns its manifest meta and the torch module that was
    converted (the calibrated fake-quant module for W8A8, the model itself otherwise).
    ``layers``: edgekit's calibrated weights for W8A8 (:mod:`calibration.torch_transfer`)."""
    meta: dict[str, Any] = {"deployment_target": target, "compute_precision": "fp32" if precision == "fp32" else "fp16",
                            "io_dtype": "fp32"}
    t0 = time.perf_counter()
    use_layers = layers if precision == "int8" and int8_mode == "w8a8" else None
    if use_layers:
        from calibration.torch_transfer import transfer

        model = transfer(model, use_layers, inputs)
    module = Normalize.wrap(model, image["mean"], image["std"]) if image else model.eval()
    args = example_inputs(inputs)
    steps = []
    if precision == "int8" and int8_mode == "w8a8":
        if calib is None:
            raise ExportError("coreml-int8", "W8A8 needs calibration feeds")
        if image:  # calibration feeds are normalised tensors; the wrapped model takes 0-1 pixels
            calib = _as_unit_pixels(calib, inputs, image)
        module, meta["quantization"] = quantize_w8a8(module, args, calib, inputs, calib_samples, use_layers)
        if use_layers:
            steps.append("edgekit weights (Q/DQ ONNX) into the BN-folded model")
        steps.append("LinearQuantizer(prepare, step, calibrate, step, finalize)")
    mlmodel, used, notes, last = None, None, [], None
    for fe in (("trace", "export") if frontend == "auto" else (frontend,)):
        try:
            mlmodel = convert(capture(module, args, fe), inputs, outputs, precision, target, image)
            used = fe
            break
        except Exception as exc:  # the frontend's own error types; both are reported below
            first = first_line(exc, None, empty="")
            notes.append(f"{FRONTEND_STEP[fe]}: {type(exc).__name__}: {first[:200]}")
            last = exc
    if mlmodel is None:
        raise ExportError(f"coreml-{precision}", "coremltools could not convert the model; " + " | ".join(notes),
                          hint="rerun with --debug; try --coreml-frontend export or trace") from last
    if notes:
        meta["frontend_fallback"] = notes
    meta["frontend"] = used
    steps.append(FRONTEND_STEP[used])
    steps.append(f"coremltools.convert(mlprogram, {meta['compute_precision']}, {target})")
    if precision == "int8" and int8_mode == "w8":
        mlmodel, meta["quantization"] = quantize_weights(mlmodel)
        steps.append("linear_quantize_weights")
    with quiet_logs(*QUIET):
        mlmodel.save(str(path))
    meta["conversion"] = " -> ".join(steps)
    meta["export_seconds"] = round(time.perf_counter() - t0, 2)
    return meta, module


def _as_unit_pixels(feeds: Feeds, inputs: tuple[InputSpec, ...], image: dict[str, Any]):
    from .mil.runner import to_pixels

    name = inputs[0].name
    return ({name: to_pixels(f[name], image["mean"], image["std"]) / 255.0} for f in feeds)
