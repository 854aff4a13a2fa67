"""An opt-in, content-keyed cache of torch → ONNX exports (``$EDGEKIT_EXPORT_CACHE``).

``torch.onnx.export(dynamo=True)`` takes 2-8 s per focus model on 2 cores, and it is
deterministic: the same module, weights, input shapes, opset and tool versions give the
same bytes (checked 2026-12-05: two exports of mobilenet_v3_small, identical sha256). Runs that
export one model many times (the test suite: 104 exports, 106 s of them repeats, in CLI
subprocesses, xdist workers and Ray nodes alike; a user's ``edgekit matrix``) can set
``EDGEKIT_EXPORT_CACHE=DIR`` to export each once.

The key hashes everything the exported graph depends on:

* torch, onnx and onnxscript versions, the opset, the batch mode, input specs, output names;
* this package's exporter source;
* the model: every submodule's class (module + qualified name), the source file of each of
  those classes, each submodule's plain configuration attributes (``stride``,
  ``use_res_connect``, ...: what a constructor argument can change without changing a
  weight's shape), and every parameter and buffer's name, dtype, shape and bytes.

A stale hit is not silent: the FP32 parity stage compares the exported graph with the PyTorch
module on real photos on every export. The cache is never needed: any failure to key, read or
write it falls back to a plain export. Entries are written atomically (temp file + rename),
so concurrent processes can share one folder. Nothing is cached unless the variable is set.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

from edgekit.artifact import replace_file

ENV = "EDGEKIT_EXPORT_CACHE"
_PLAIN = (bool, int, float, str, type(None))


def cache_dir() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value).expanduser() if value else None


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _config(module) -> list[tuple[str, str]]:
    return sorted((k, repr(v)) for k, v in vars(module).items() if not k.startswith("_") and _plain(v))


def _source_files(modules: Iterable[Any]) -> list[str]:
    """The files defining the model's own (non-torch) classes; LookupError when one has no file
    (a class made by ``exec``): such a model is not cached, since its code cannot be keyed."""
    files = set()
    for m in modules:
        for cls in type(m).__mro__:
            if cls is object or cls.__module__ == "torch" or cls.__module__.startswith("torch."):
                continue
            try:
                f = inspect.getsourcefile(cls)
            except (TypeError, OSError):
                f = None
            if not f or not Path(f).is_file():
                raise LookupError(f"no source file for {cls.__module__}.{cls.__qualname__}")
            files.add(f)
    return sorted(files)


def key(model, inputs, opset: int, dynamic_batch: bool, output_names: tuple[str, ...]) -> str:
    """The cache key of one export (see the module docstring)."""
    import onnx
    import onnxscript
    import torch

    h = hashlib.sha256()

    def put(*parts: Any) -> None:
        for p in parts:
            h.update(p if isinstance(p, bytes) else repr(p).encode())
            h.update(b"\0")

    put(torch.__version__, onnx.__version__, getattr(onnxscript, "__version__", "?"), opset, dynamic_batch,
        tuple(output_names), tuple((i.name, tuple(i.shape), i.dtype) for i in inputs), sys.version_info[:2])
    put(Path(__file__).with_name("exporter.py").read_bytes())
    modules = [m for _, m in model.named_modules()]
    for f in _source_files(modules):
        put(f, Path(f).read_bytes())
    for name, m in model.named_modules():
        put(name, type(m).__module__, type(m).__qualname__, _config(m))
    state = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in state:
        t = t.detach().cpu().contiguous()
        put(name, str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def entry(model, inputs, opset: int, dynamic_batch: bool, output_names) -> Path | None:
    """The cache file of this export (present or not); None when the cache is off or the model
    cannot be keyed (it is then exported as usual)."""
    root = cache_dir()
    if root is None:
        return None
    try:
        return root / f"{key(model, inputs, opset, dynamic_batch, output_names)}.onnx"
    except Exception:  # noqa: BLE001 - an unkeyable model is exported as usual
        return None


def fetch(cached: Path, path: Path) -> bool:
    """Copy a cached export to ``path``; False on a miss."""
    try:
        shutil.copyfile(cached, path)
        return True
    except OSError:
        return False


def put(path: Path, cached: Path) -> None:
    """Store the export at ``path`` as ``cached``, atomically; errors are ignored (the cache is an
    optimization, never a failure)."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        replace_file(cached, lambda tmp: shutil.copyfile(path, tmp))
    except OSError:
        return
