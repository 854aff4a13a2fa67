"""The calibration cache: calibrate once per (model, data, method, options).

An entry is keyed by the source ONNX sha256, the feeds fingerprint, the method and
the options that change the result. It holds the finished Q/DQ ONNX and its manifest
meta (``result``) and, separately, the activation statistics (``stats``), which
depend only on the model and the feeds: a second run with the same inputs copies
the Q/DQ model; a run with other options but the same data skips the statistics pass.

Location: ``$EDGEKIT_CACHE_DIR`` if set, else ``~/.cache/edgekit/calibration``.
Entries are written atomically (temporary name, then rename); a damaged entry is
ignored and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .stats import TensorStats

ENV = "EDGEKIT_CACHE_DIR"


def default_dir() -> Path:
    env = os.environ.get(ENV)
    return Path(env) if env else Path.home() / ".cache" / "edgekit" / "calibration"


def make_key(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CalibrationCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_dir()

    # -- finished Q/DQ models ------------------------------------------------------
    def lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        d = self.root / "result" / key
        model, meta = d / "model.onnx", d / "meta.json"
        if not (model.is_file() and meta.is_file()):
            return None
        try:
            return model, json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def store(self, key: str, model: Path, meta: dict[str, Any], extras: dict[str, Path] | None = None) -> Path:
        """The entry: the model, its meta and ``extras`` (file name → file; spare fallback steps)."""
        def fill(tmp: Path) -> None:
            shutil.copyfile(model, tmp / "model.onnx")
            for name, f in (extras or {}).items():
                shutil.copyfile(f, tmp / name)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=_json))
        return self._atomic(self.root / "result" / key, fill)

    # -- activation statistics -----------------------------------------------------
    def load_stats(self, key: str) -> dict[str, TensorStats] | None:
        f = self.root / "stats" / key / "stats.json"
        if not f.is_file():
            return None
        try:
            return {d["name"]: TensorStats.from_dict(d) for d in json.loads(f.read_text())}
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None

    def store_stats(self, key: str, stats: dict[str, TensorStats]) -> Path:
        def fill(tmp: Path) -> None:
            (tmp / "stats.json").write_text(json.dumps([s.to_dict() for s in stats.values()]))
        return self._atomic(self.root / "stats" / key, fill)

    def _atomic(self, dest: Path, fill) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            fill(tmp)
            if dest.exists():
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest


def _json(o: Any):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
