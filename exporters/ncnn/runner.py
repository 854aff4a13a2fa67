"""Runs an ncnn model (``.ncnn.param`` + ``.ncnn.bin``) with ncnn's Python binding.

API relied on (ncnn README / python binding, pypi.org/project/ncnn and the ncnn wiki
"use ncnn with pytorch or onnx"): ``ncnn.Net()``, ``net.opt`` (an ``ncnn.Option``:
``num_threads``, ``use_fp16_storage``, ``use_fp16_packed``, ``use_fp16_arithmetic``,
``use_bf16_storage``, ``use_vulkan_compute``), ``load_param``/``load_model`` (0 on success),
``input_names()``/``output_names()``, ``create_extractor()``, ``ex.input(name, Mat)``,
``ex.extract(name) -> (ret, Mat)``. One extractor per inference (an Extractor is the
context of one run and is not reused, as ncnn's maintainer says in Tencent/ncnn#243).

Two traps this runner handles:

* ncnn's options default to FP16 storage and arithmetic wherever the CPU has them, so
  an FP32 artifact explicitly turns them off; FP16 turns them on.
* ``ncnn.Mat(array)`` wraps the NumPy buffer without owning it: the array must stay
  alive until ``extract`` returns, or ncnn reads freed memory.

ncnn has no batch dimension: each row of a feed is run alone (``C×H×W``) and the
outputs are stacked back to the shapes recorded at export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.contracts import Feed
from edgekit.errors import ArtifactError, require
from edgekit.specs import InputSpec

PARAM_SUFFIX = ".ncnn.param"
BIN_SUFFIX = ".ncnn.bin"


def model_files(folder: Path) -> tuple[Path, Path]:
    """The ``.ncnn.param`` and ``.ncnn.bin`` in an artifact folder (exactly one of each)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"ncnn model folder not found: {folder}")
    params = sorted(folder.glob(f"*{PARAM_SUFFIX}"))
    bins = sorted(folder.glob(f"*{BIN_SUFFIX}"))
    if len(params) != 1 or len(bins) != 1:
        raise ArtifactError(f"{folder} must hold one {PARAM_SUFFIX} and one {BIN_SUFFIX}, "
                            f"found {len(params)} and {len(bins)}")
    return params[0], bins[0]


def set_precision(opt: Any, precision: str) -> None:
    """FP16 storage + arithmetic for ``fp16``; plain FP32 otherwise (ncnn's defaults are FP16)."""
    fp16 = precision == "fp16"
    opt.use_fp16_storage = fp16
    opt.use_fp16_packed = fp16
    opt.use_fp16_arithmetic = fp16
    opt.use_bf16_storage = False
    opt.use_vulkan_compute = False


class NcnnRunner:
    """Executes one ncnn model on the CPU. Float32 in, float32 out."""

    name = "ncnn"

    def __init__(self, folder: Path, inputs: tuple[InputSpec, ...] = (), outputs: tuple[str, ...] = (),
                 precision: str = "fp32", threads: int | None = None,
                 output_shapes: Sequence[Sequence[int]] | None = None):
        self.folder = Path(folder)
        self.inputs: tuple[InputSpec, ...] = tuple(inputs)
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.precision = precision
        self.threads = threads
        self.output_shapes = [tuple(s) for s in output_shapes] if output_shapes else None
        self._net: Any = None
        self._in_blobs: list[str] = []
        self._out_blobs: list[str] = []

    def __enter__(self) -> "NcnnRunner":
        ncnn = require("ncnn", "mobile", "the ncnn runner")
        param, weights = model_files(self.folder)
        net = ncnn.Net()
        set_precision(net.opt, self.precision)
        if self.threads:
            net.opt.num_threads = int(self.threads)
        if net.load_param(str(param)) != 0:
            raise ArtifactError(f"ncnn cannot parse {param.name}", hint="re-export it with this ncnn/pnnx version")
        if net.load_model(str(weights)) != 0:
            raise ArtifactError(f"ncnn cannot load weights {weights.name}", hint="re-export it")
        self._net = net
        self._in_blobs = list(net.input_names())
        self._out_blobs = list(net.output_names())
        if self.inputs and len(self.inputs) != len(self._in_blobs):
            raise ArtifactError(f"{param.name} has {len(self._in_blobs)} inputs, the artifact lists {len(self.inputs)}")
        if not self.inputs:
            self.inputs = tuple(InputSpec(b) for b in self._in_blobs)
        if not self.outputs:
            self.outputs = tuple(self._out_blobs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._net is not None:
            self._net.clear()
        self._net = None

    def _run_row(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        import ncnn

        ex = self._net.create_extractor()
        mats = []  # keep the arrays and Mats alive until extract returns
        for blob, arr in zip(self._in_blobs, rows):
            mat = ncnn.Mat(arr)
            mats.append((arr, mat))
            ex.input(blob, mat)
        outs = []
        for blob in self._out_blobs:
            ret, mat = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"ncnn extract('{blob}') failed with code {ret}")
            outs.append(np.array(mat, dtype=np.float32, copy=True))
        del mats
        return outs

    def infer(self, feeds: Feed) -> dict[str, np.ndarray]:
        if self._net is None:
            raise RuntimeError("NcnnRunner.infer called outside its 'with' block")
        arrays = [np.asarray(feeds[i.name], dtype=np.float32) for i in self.inputs]
        n = arrays[0].shape[0]
        per_row = [self._run_row([np.ascontiguousarray(a[r]) for a in arrays]) for r in range(n)]
        out = {}
        for k, name in enumerate(self.outputs):
            rows = [row[k] for row in per_row]
            if self.output_shapes and k < len(self.output_shapes):
                shape = self.output_shapes[k][1:]
                rows = [r.reshape(shape) for r in rows]
            out[name] = np.stack(rows)
        return out
