"""Target registry: exporters found through the ``edgekit.targets`` entry-point group.

Our own targets are listed in ``pyproject.toml`` like any third-party plug-in. The
built-in table below is only a fallback for running from a source tree that was never
installed. Exporter modules import their heavy backend lazily, so listing targets
stays cheap.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from importlib import metadata

from .contracts import Exporter
from .errors import EdgekitError, UnknownTargetError

GROUP = "edgekit.targets"

_BUILTIN = {
    "onnx": "exporters.onnx.exporter:OnnxTarget",
    "openvino": "exporters.openvino.exporter:OpenVinoTarget",
    "tensorrt": "exporters.tensorrt.exporter:TensorRTTarget",
    "coreml": "exporters.coreml.exporter:CoreMLTarget",
    "executorch": "exporters.executorch.exporter:ExecuTorchTarget",
    "ncnn": "exporters.ncnn.exporter:NcnnTarget",
}


def _load(ref: str) -> type[Exporter]:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


@lru_cache(maxsize=1)
def _entries() -> dict[str, str]:
    found = {}
    for ep in metadata.entry_points(group=GROUP):
        found[ep.name] = ep.value
    for name, ref in _BUILTIN.items():
        if name not in found:
            mod = ref.partition(":")[0]
            if importlib.util.find_spec(mod) is not None:
                found[name] = ref
    return found


@lru_cache(maxsize=None)
def get_target(name: str) -> Exporter:
    """The exporter for ``name`` or an alias of it (``trt`` → ``tensorrt``)."""
    key = resolve_target_name(name)
    try:
        cls = _load(_entries()[key])
    except ImportError as exc:
        raise EdgekitError(f"target '{key}' failed to load: {exc}") from exc
    return cls()


def resolve_target_name(name: str) -> str:
    entries = _entries()
    key = name.lower()
    if key in entries:
        return key
    for tname, ref in entries.items():
        try:
            if key in _load(ref).aliases:
                return tname
        except ImportError:
            continue
    raise UnknownTargetError(name, entries)


def list_targets() -> list[Exporter]:
    out = []
    for name in sorted(_entries()):
        try:
            out.append(get_target(name))
        except EdgekitError:
            continue
    return out


def target_names() -> list[str]:
    return sorted(_entries())
