"""The interpreter as an edgekit Runner (``coreml-mil-interpreter``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit.errors import ArtifactError
from edgekit.specs import InputSpec


def to_pixels(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised NCHW tensor back to the 0-255 pixel values an image input receives
    (rounded: Core ML image inputs are 8-bit)."""
    shape = (1, len(mean), 1, 1)
    pixels = (np.asarray(x, np.float32) * np.asarray(std, np.float32).reshape(shape)
              + np.asarray(mean, np.float32).reshape(shape)) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.float32)


class MilRunner:
    """Runs a saved ``.mlpackage`` with :class:`~exporters.coreml.mil.Interpreter`.

    ``image`` (the artifact's ``meta["image_input"]``: mean, std) marks a package whose
    input is an image: feeds stay the normalised tensors every other runner takes and are
    turned back into pixels here, as the macOS runner does for Core ML.
    """

    name = "coreml-mil-interpreter"
    # a NumPy reference interpreter: it proves the package's numbers, its speed says nothing
    # about Core ML on a device (reports keep its time out of speed-ups and INT8/FP32 checks)
    parity_only = True

    def __init__(self, path: Path, inputs: tuple[InputSpec, ...] = (), outputs: tuple[str, ...] = (),
                 image: Mapping[str, Any] | None = None, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.image = dict(image) if image else None
        self.interpreter = None

    def __enter__(self) -> "MilRunner":
        from .executor import Interpreter

        if not self.path.is_dir():
            raise ArtifactError(f"Core ML package not found: {self.path}")
        self.interpreter = Interpreter(self.path, threads=self.threads or 1)
        prog = self.interpreter.program
        if not self.inputs:
            self.inputs = tuple(InputSpec(v.name, tuple(d or 1 for d in (v.shape or ()))) for v in prog.inputs)
        if not self.outputs:
            self.outputs = prog.outputs
        return self

    def __exit__(self, *exc: object) -> None:
        self.interpreter = None

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.interpreter is None:
            raise RuntimeError("MilRunner.infer called outside its 'with' block")
        prog = self.interpreter.program
        feed = {}
        for var, spec in zip(prog.inputs, self.inputs or prog.inputs):
            x = np.asarray(feeds[spec.name] if spec.name in feeds else feeds[var.name])
            feed[var.name] = to_pixels(x, self.image["mean"], self.image["std"]) if self.image else x
        out = self.interpreter.run(feed)
        names = self.outputs or prog.outputs
        return {n: np.asarray(out[p], dtype=np.float32) for n, p in zip(names, prog.outputs)}
