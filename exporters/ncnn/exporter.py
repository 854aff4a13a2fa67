"""PyTorch → ncnn (``.ncnn.param`` + ``.ncnn.bin``) through pnnx, FP32 or FP16.

What this relies on:

* pnnx (https://github.com/pnnx/pnnx, pypi.org/project/pnnx): the documented path is
  ``torch.jit.trace(model, x).save("m.pt")`` then the ``pnnx`` converter
  (``pnnx m.pt inputshape=[1,3,224,224]f32 fp16=0 ncnnparam=... ncnnbin=...``; the
  option list is the converter's own usage text). ``pnnx.export(model, path, inputs)``
  does the same two steps, but runs the converter in the current directory, ignores its
  exit status and then imports the Python module it generated, so edgekit traces
  itself and runs the converter binary that the wheel ships (``pnnx.EXEC_PATH``) in a
  temporary folder, checking its exit status. pnnx writes several side files there
  (``*.pnnx.param/bin``, ``*_pnnx.py``, ``*.pnnx.onnx``, ``*_ncnn.py``); only the
  ncnn pair is kept.
* ``fp16=1`` makes pnnx store the weights in FP16 in ``.ncnn.bin``; the runner then
  turns on ncnn's FP16 storage and arithmetic (see :mod:`exporters.ncnn.runner`). FP32
  stores FP32 weights and turns them off.
* INT8 in ncnn needs the ``ncnn2table`` (calibration table) and ``ncnn2int8`` tools
  (ncnn wiki "quantized int8 inference"); neither the ``ncnn`` nor the ``pnnx`` wheel
  ships them, so ``--int8`` is refused in ``check``.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact, tool_versions
from edgekit.contracts import ExportContext, Exporter, ExportRequest
from edgekit.errors import ArtifactError, ExportError, UsageError, require
from edgekit.specs import InputSpec

from .runner import BIN_SUFFIX, PARAM_SUFFIX, NcnnRunner, model_files

PACKAGES = ("pnnx", "ncnn")
PNNX_TIMEOUT_S = 900
_PNNX_DTYPES = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32", "uint8": "u8", "int8": "i8"}


def inputshape_arg(inputs: tuple[InputSpec, ...]) -> str:
    """pnnx's ``inputshape=[1,3,224,224]f32,...`` for the given inputs."""
    parts = []
    for i in inputs:
        dtype = _PNNX_DTYPES.get(i.dtype)
        if dtype is None:
            raise UsageError(f"ncnn export: input '{i.name}' has dtype {i.dtype}, which pnnx cannot take")
        parts.append("[" + ",".join(str(d) for d in i.shape) + "]" + dtype)
    return ",".join(parts)


def param_summary(param: Path) -> dict[str, Any]:
    """Layer and blob counts of an ``.ncnn.param`` (text format: magic, counts, one layer a line)."""
    lines = param.read_text().splitlines()
    layers, blobs = (int(v) for v in lines[1].split()[:2])
    kinds = Counter(line.split()[0] for line in lines[2:] if line.strip())
    return {"layers": layers, "blobs": blobs, "layer_types": dict(kinds.most_common())}


def run_pnnx(model, args: tuple[Any, ...], inputs: tuple[InputSpec, ...], dest: Path, stem: str,
             fp16: bool) -> dict[str, Any]:
    """Trace, convert with pnnx in a temporary folder, keep ``<stem>.ncnn.param/bin`` in ``dest``."""
    import torch

    pnnx = require("pnnx", "mobile", "ncnn export (pnnx)")
    exe = Path(getattr(pnnx, "EXEC_PATH", ""))
    if not exe.is_file():
        raise ExportError("pnnx", f"the pnnx converter binary is missing from the pnnx package ({exe})",
                          hint="reinstall pnnx: pip install --force-reinstall pnnx")
    with tempfile.TemporaryDirectory(prefix="edgekit-pnnx-") as tmp:
        tmp_path = Path(tmp)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, args, check_trace=False)
        traced.save(str(tmp_path / "model.pt"))
        cmd = [str(exe), "model.pt", f"inputshape={inputshape_arg(inputs)}", f"fp16={1 if fp16 else 0}",
               "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError("pnnx", f"pnnx did not finish in {PNNX_TIMEOUT_S} s") from None
        param, weights = tmp_path / "model.ncnn.param", tmp_path / "model.ncnn.bin"
        if proc.returncode != 0 or not param.is_file() or not weights.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise ExportError("pnnx", f"pnnx exited with {proc.returncode}: {' | '.join(tail)[:300]}",
                              hint="an operator pnnx/ncnn does not support? rerun with --debug")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(param, dest / f"{stem}{PARAM_SUFFIX}")
        shutil.copyfile(weights, dest / f"{stem}{BIN_SUFFIX}")
        unsupported = [ln.split()[0] for ln in param.read_text().splitlines()[2:]
                       if ln.split() and ln.split()[0].startswith(("pnnx.", "aten::", "F.", "torch."))]
    if unsupported:
        raise ExportError("pnnx", f"pnnx left {len(unsupported)} operator(s) ncnn cannot run: "
                          f"{', '.join(sorted(set(unsupported))[:5])}")
    return {"converter": "pnnx (torch.jit.trace → pnnx → ncnn)", "weights_fp16": fp16}


class NcnnTarget(Exporter):
    """ncnn model (``.param`` + ``.bin``): the community's most used mobile inference engine."""

    name = "ncnn"
    aliases = ("pnnx",)
    description = "ncnn .param/.bin via pnnx (Android/iOS/ARM boards); FP16 storage + arithmetic"
    precisions = ("fp32", "fp16")
    source = "torch"
    extra = "mobile"
    packages = PACKAGES

    def available(self) -> tuple[bool, str]:
        try:
            ncnn = require("ncnn", "mobile")
            require("pnnx", "mobile")
        except Exception as exc:
            return False, str(exc)
        return True, f"ncnn {getattr(ncnn, '__version__', '?')}"

    def check(self, request: ExportRequest) -> None:
        if request.precision == "int8":
            raise UsageError("ncnn INT8 needs ncnn's ncnn2table and ncnn2int8 tools, which the ncnn and pnnx "
                             "wheels do not ship",
                             hint="use --fp16 with ncnn, or --int8 with --target executorch / onnx / openvino")
        super().check(request)
        require("pnnx", "mobile", "ncnn export (pnnx)")
        require("ncnn", "mobile", "the ncnn target")

    def export(self, ctx: ExportContext, workdir: Path) -> Artifact:
        import torch

        precision = ctx.request.precision
        model = ctx.model.eval()
        args = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in ctx.inputs)
        with torch.inference_mode():
            out = model(*args)
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        names = ("output",) if len(outs) == 1 else tuple(f"output{i}" for i in range(len(outs)))
        folder = Path(workdir) / f"{ctx.stem}_ncnn"
        t0 = time.perf_counter()
        meta = run_pnnx(model, args, tuple(ctx.inputs), folder, ctx.stem, fp16=precision == "fp16")
        meta["export_seconds"] = round(time.perf_counter() - t0, 2)
        meta["output_shapes"] = [list(o.shape) for o in outs]
        meta["runtime_options"] = {"use_fp16_storage": precision == "fp16", "use_fp16_arithmetic": precision == "fp16"}
        meta.update(param_summary(model_files(folder)[0]))
        art = Artifact(path=folder, stage=f"ncnn-{precision}", format="ncnn", precision=precision, target=self.name,
                       inputs=tuple(ctx.inputs), outputs=names, meta=meta, tools=tool_versions(*PACKAGES))
        try:  # fail the export, not the parity step, if ncnn cannot load what pnnx wrote
            with self.open(art, threads=1):
                pass
        except ArtifactError as exc:
            raise ExportError("ncnn", exc.message, hint=exc.hint) from None
        ctx.log(f"ncnn {precision}: {meta['layers']} layers, {art.size_bytes / 1e6:.1f} MB")
        return art

    def open(self, artifact: Artifact, device: str | None = None, **options: Any) -> NcnnRunner:
        self.check_device(device)  # the ncnn runner here runs on the CPU (no Vulkan)
        return NcnnRunner(artifact.path, artifact.inputs, artifact.outputs, precision=artifact.precision,
                          threads=options.get("threads"), output_shapes=artifact.meta.get("output_shapes"))
