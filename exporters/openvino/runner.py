"""Run an OpenVINO IR: device checks, compile configuration, the Runner, a short timer.

The CPU plugin picks its own arithmetic unless told: on CPUs with AMX or AVX512-BF16
(Sapphire Rapids and later) it runs "FP32" models in bfloat16 by default
(``INFERENCE_PRECISION_HINT`` = bf16). An FP32 artifact would then silently differ
from PyTorch by bf16 rounding, so the runner pins the hint that the artifact's
manifest records (f32 for FP32 and INT8 IRs, see docs/openvino.md); the user can
override it with ``--ov-inference-precision``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.contracts import Feed
from edgekit.errors import ArtifactError, DeviceNotAvailableError, UsageError, first_line, require
from edgekit.specs import InputSpec

HINTS = ("latency", "throughput")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
# Virtual devices that schedule onto the real ones.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")


def openvino():
    return require("openvino", "openvino", "the OpenVINO target")


def available_devices() -> list[str]:
    """Devices the installed OpenVINO plugins see here, e.g. ``['CPU', 'GPU.0']``."""
    return list(openvino().Core().available_devices)


def resolve_device(device: str | None, available: list[str] | None = None) -> str:
    """Normalise ``device`` (CPU default) and fail with the available ones when it is absent.

    ``GPU`` matches ``GPU.0``; ``AUTO`` (or ``AUTO:GPU,CPU``) needs any device present.
    """
    dev = (device or "CPU").strip().upper()
    avail = available_devices() if available is None else list(available)
    listed = ", ".join(avail) if avail else "none"
    base = dev.split(":")[0]
    if base in VIRTUAL_DEVICES:
        if not avail:
            raise DeviceNotAvailableError(f"OpenVINO device '{dev}' needs a device, and none is available here",
                                          hint="install an OpenVINO device plugin")
        wanted = [d for d in dev.partition(":")[2].split(",") if d]
        missing = [d for d in wanted if not _present(d, avail)]
        if missing:
            raise DeviceNotAvailableError(f"OpenVINO device {', '.join(missing)} (in '{dev}') is not available here; "
                                          f"available devices: {listed}", hint=f"use --device {avail[0]}")
        return dev
    if not _present(dev, avail):
        raise DeviceNotAvailableError(f"OpenVINO device '{dev}' is not available here; available devices: {listed}",
                                      hint=f"use --device {' or --device '.join(avail + ['AUTO'])}" if avail else None)
    return dev


def _present(dev: str, avail: list[str]) -> bool:
    return dev in avail or any(a.split(".")[0] == dev for a in avail)


def compile_config(core: Any, device: str, threads: int | None = None, hint: str | None = None,
                   inference_precision: str | None = None) -> dict[str, Any]:
    """The properties to compile with; only those the device supports are set."""
    if hint is not None and hint not in HINTS:
        raise UsageError(f"unknown OpenVINO performance hint '{hint}'", hint=f"choose one of {', '.join(HINTS)}")
    if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
        raise UsageError(f"unknown OpenVINO inference precision '{inference_precision}'",
                         hint=f"choose one of {', '.join(INFERENCE_PRECISIONS)}")
    base = device.split(":")[0].split(".")[0]
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES")) if base not in VIRTUAL_DEVICES else set()
    except Exception:  # a plugin that cannot answer: set nothing device-specific
        supported = set()
    cfg: dict[str, Any] = {}
    if hint:
        cfg["PERFORMANCE_HINT"] = hint.upper()
    if threads and "INFERENCE_NUM_THREADS" in supported:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if inference_precision and "INFERENCE_PRECISION_HINT" in supported:
        cfg["INFERENCE_PRECISION_HINT"] = inference_precision
    return cfg


class OpenVinoRunner:
    """Runs an IR (``.xml`` + ``.bin``) or an in-memory ``openvino.Model`` on one device."""

    def __init__(self, model: Path | Any, inputs: tuple[InputSpec, ...] | None = None,
                 outputs: tuple[str, ...] | None = None, device: str | None = None, threads: int | None = None,
                 hint: str | None = "latency", inference_precision: str | None = "f32"):
        self.model = model
        self.device = (device or "CPU").upper()
        self.threads = threads
        self.hint = hint
        self.inference_precision = inference_precision
        self.name = f"openvino-{self.device}"
        self.inputs: tuple[InputSpec, ...] = tuple(inputs or ())
        self.outputs: tuple[str, ...] = tuple(outputs or ())
        self.config: dict[str, Any] = {}
        self._compiled = None
        self._request = None

    def __enter__(self) -> "OpenVinoRunner":
        ov = openvino()
        core = ov.Core()
        self.device = resolve_device(self.device, list(core.available_devices))
        self.name = f"openvino-{self.device}"
        model = self.model
        if isinstance(model, (str, Path)):
            xml = Path(model)
            if xml.is_dir():
                xml = ir_xml(xml)
            if not xml.is_file() or not xml.with_suffix(".bin").is_file():
                raise ArtifactError(f"OpenVINO IR not found: {xml} (+ .bin)")
            try:
                model = core.read_model(str(xml))
            except Exception as exc:
                raise ArtifactError(f"OpenVINO cannot read {xml.name}: {first_line(exc)}") from None
        self.config = compile_config(core, self.device, self.threads, self.hint, self.inference_precision)
        self._compiled = core.compile_model(model, self.device, self.config)
        self._request = self._compiled.create_infer_request()
        if not self.inputs:
            self.inputs = tuple(InputSpec(p.get_any_name(), tuple(d.get_length() if d.is_static else 1
                                                                  for d in p.get_partial_shape()),
                                          dynamic_batch=p.get_partial_shape()[0].is_dynamic)
                                for p in self._compiled.inputs)
        if not self.outputs:
            self.outputs = tuple(p.get_any_name() for p in self._compiled.outputs)
        return self

    def __exit__(self, *exc: object) -> None:
        self._request = None
        self._compiled = None

    def infer(self, feeds: Feed) -> dict[str, np.ndarray]:
        if self._request is None:
            raise RuntimeError("OpenVinoRunner.infer called outside its 'with' block")
        args = {i: np.ascontiguousarray(feeds[spec.name], dtype=np.float32) for i, spec in enumerate(self.inputs)}
        # share_inputs: OpenVINO reads the (contiguous float32) arrays in place instead of copying them
        # into its own tensors first, as a deployment would. The copy cost MobileNetV3-Large's INT8 IR
        # 0.26 ms of 1.12 ms per call on 2 threads (2026-12-06). Outputs stay copies: the request
        # reuses its output buffers on the next call.
        res = self._request.infer(args, share_inputs=True)
        # outputs by position: the IR keeps the ONNX names, the artifact may name them differently
        return {name: np.asarray(res[port], dtype=np.float32) for name, port in zip(self.outputs, self._compiled.outputs)}


def ir_xml(folder: Path) -> Path:
    """The single ``.xml`` in an IR folder."""
    xmls = sorted(Path(folder).glob("*.xml"))
    if len(xmls) != 1:
        raise ArtifactError(f"expected one OpenVINO .xml in {folder}, found {len(xmls)}")
    return xmls[0]

