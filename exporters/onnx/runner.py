"""ONNX Runtime: the runner that executes any ONNX stage (exported, simplified, FP16, Q/DQ,
the ONNX Runtime INT8 form), on the CPU provider by default."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit import ort_options
from edgekit.contracts import Feed
from edgekit.errors import ArtifactError, first_line, require
from edgekit.specs import InputSpec

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8}


class OrtRunner:
    """Runs an ONNX file on ONNX Runtime (CPU provider by default)."""

    def __init__(self, path: Path, inputs: tuple[InputSpec, ...] | None = None, outputs: tuple[str, ...] | None = None,
                 threads: int | None = None, providers: list[str] | None = None, optimize: bool = True,
                 name: str = "onnxruntime"):
        self.path = Path(path)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimize = optimize
        self.name = name
        self._session = None
        self._given_inputs = inputs
        self.inputs: tuple[InputSpec, ...] = tuple(inputs or ())
        self.outputs: tuple[str, ...] = tuple(outputs or ())
        self._input_types: dict[str, Any] = {}

    def __enter__(self) -> "OrtRunner":
        ort = require("onnxruntime", "onnx", "the ONNX runner")
        if not self.path.is_file():
            raise ArtifactError(f"ONNX file not found: {self.path}")
        so = ort_options.apply(ort.SessionOptions(), self.path)   # exact integer kernels on x86 without VNNI
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if not self.optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self._session = ort.InferenceSession(str(self.path), so, providers=self.providers)
        except Exception as exc:
            msg = first_line(exc, None)
            raise ArtifactError(f"ONNX Runtime cannot load {self.path.name}: {msg[:300]}") from None
        sess_inputs = self._session.get_inputs()
        self._input_types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in sess_inputs}
        if not self.inputs:
            self.inputs = tuple(InputSpec(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape),
                                          dynamic_batch=not isinstance(i.shape[0], int)) for i in sess_inputs)
        if not self.outputs:
            self.outputs = tuple(o.name for o in self._session.get_outputs())
        return self

    def __exit__(self, *exc: object) -> None:
        self._session = None

    def infer(self, feeds: Feed) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("OrtRunner.infer called outside its 'with' block")
        names = [o.name for o in self._session.get_outputs()]
        feed = {k: np.asarray(v, dtype=self._input_types.get(k, np.float32)) for k, v in feeds.items()
                if k in self._input_types}
        outs = self._session.run(names, feed)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs)}


def ort_providers() -> list[str]:
    try:
        return list(require("onnxruntime", "onnx").get_available_providers())
    except Exception:  # noqa: BLE001 - not installed: CPU only (check() names the missing package)
        return []
