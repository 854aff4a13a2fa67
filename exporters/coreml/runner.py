"""Runners for a Core ML package: the Core ML runtime on macOS, the MIL interpreter elsewhere.

macOS — coremltools "Model Prediction" guide
(https://apple.github.io/coremltools/docs-guides/source/model-prediction.html) and
``coremltools.models.MLModel(path, compute_units=ComputeUnit.X)``: ``predict`` takes a
dict of NumPy arrays (a PIL image for an image input) and returns a dict of arrays;
prediction exists on macOS only. Compute units: ``ALL``, ``CPU_ONLY``, ``CPU_AND_GPU``,
``CPU_AND_NE`` (``coremltools.ComputeUnit``).

Everywhere else — :class:`exporters.coreml.mil.MilRunner`. The runner's ``name`` says which
produced the numbers (``coreml-macos-CPU_ONLY`` / ``coreml-mil-interpreter``), and
reports carry that name.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.errors import ArtifactError, UnavailableError, UsageError
from edgekit.specs import InputSpec

from .convert import COMPUTE_UNITS
from .mil.quiet import import_coremltools
from .mil.runner import MilRunner, to_pixels


def coreml_runtime_available() -> tuple[bool, str]:
    """(True, "") when Core ML prediction can run here (macOS with coremltools' native module)."""
    if sys.platform != "darwin":
        return False, f"Core ML prediction needs macOS (this is {sys.platform})"
    try:
        import_coremltools()
        from coremltools import libcoremlpython  # noqa: F401
    except Exception as exc:  # pragma: no cover - macOS only
        return False, f"coremltools cannot predict here: {exc}"
    return True, ""  # pragma: no cover - macOS only


class CoreMLRunner:  # pragma: no cover - needs macOS
    """Core ML prediction through coremltools on macOS."""

    def __init__(self, path: Path, inputs: tuple[InputSpec, ...], outputs: tuple[str, ...],
                 compute_units: str = "ALL", image: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.compute_units = compute_units
        self.image = dict(image) if image else None
        self.name = f"coreml-macos-{compute_units}"
        self._model = None
        self._out_names: tuple[str, ...] = ()

    def __enter__(self) -> "CoreMLRunner":
        ct = import_coremltools()
        if not self.path.is_dir():
            raise ArtifactError(f"Core ML package not found: {self.path}")
        self._model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, self.compute_units))
        self._out_names = tuple(o.name for o in self._model.get_spec().description.output)
        return self

    def __exit__(self, *exc: object) -> None:
        self._model = None

    def _feed(self, spec: InputSpec, x: np.ndarray) -> Any:
        if not self.image:
            return np.ascontiguousarray(x, dtype=np.float32)
        from PIL import Image

        pixels = to_pixels(x, self.image["mean"], self.image["std"])[0].astype(np.uint8)
        return Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise RuntimeError("CoreMLRunner.infer called outside its 'with' block")
        batch = np.asarray(feeds[self.inputs[0].name]).shape[0]
        if self.image and batch != 1:
            raise UsageError("a Core ML image input takes one image per prediction", hint="use --batch 1")
        out = self._model.predict({i.name: self._feed(i, feeds[i.name]) for i in self.inputs})
        names = self.outputs or self._out_names
        return {n: np.asarray(out[p], dtype=np.float32) for n, p in zip(names, self._out_names)}


def open_runner(path: Path, inputs: tuple[InputSpec, ...], outputs: tuple[str, ...], *,
                compute_units: str | None = None, image: Mapping[str, Any] | None = None,
                runner: str = "auto", threads: int | None = None):
    """The Core ML runtime on macOS (``runner="auto"`` or ``"coreml"``), the interpreter elsewhere
    or when ``runner="interpreter"``."""
    units = (compute_units or "ALL").upper()
    if units not in COMPUTE_UNITS:
        raise UsageError(f"unknown compute units '{compute_units}'", hint=f"choose one of {', '.join(COMPUTE_UNITS)}")
    if runner not in ("auto", "coreml", "interpreter"):
        raise UsageError(f"unknown Core ML runner '{runner}'", hint="auto, coreml or interpreter")
    if runner != "interpreter":
        ok, why = coreml_runtime_available()
        if ok:  # pragma: no cover - macOS only
            return CoreMLRunner(path, inputs, outputs, units, image)
        if runner == "coreml":
            raise UnavailableError(why, hint="use the MIL interpreter (runner='interpreter') off macOS")
    return MilRunner(path, inputs, outputs, image, threads=threads)
