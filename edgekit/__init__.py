"""edgekit: export a PyTorch vision model to edge targets and prove nothing broke.

``import edgekit`` is light: torch and the backends are imported only when used.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "edgekit.models",
    "list_models": "edgekit.models",
    "get_spec": "edgekit.models",
    "register_model": "edgekit.models",
    "export": "edgekit.pipeline",
    "ExportRequest": "edgekit.contracts",
    "Manifest": "edgekit.artifact",
    "Tolerance": "edgekit.compare",
    "Comparison": "edgekit.compare",
    "get_target": "edgekit.targets",
    "list_targets": "edgekit.targets",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
