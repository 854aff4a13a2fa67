"""Artifacts on disk and their manifest (``artifact.json``), written atomically.

An export writes one folder. It holds every stage's file (the ONNX, the simplified
ONNX, the precision-encoded ONNX, the target's artifact) and one ``artifact.json``
that lists the stages in order, the model, the request, the parity results and the
tool versions. The folder is built under a temporary name beside its destination and
renamed into place only when complete, so an interrupted export never leaves a
folder that looks valid.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator  # noqa: F401

from .errors import ArtifactError, UsageError  # noqa: F401
from .specs import InputSpec

MANIFEST = "artifact.json"
SCHEMA = "edgekit.artifact/1"


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tool_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (those installed only)."""
    out = {"python": sys.version.split()[0]}
    for n in ("edgekit", "torch", "numpy", *names):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


@dataclass
class Artifact:
    """One stage's output: a file or folder plus what it is.

    ``path`` is absolute while in use; the manifest stores it relative to its folder.
    ``target`` names the exporter whose ``open`` can run it (``onnx`` for every ONNX).
    """

    path: Path
    stage: str
    format: str
    precision: str
    target: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ("output",)
    parent: str | None = None
    sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)
        self.inputs = tuple(self.inputs)
        self.outputs = tuple(self.outputs)
        if not self.sha256 and self.path.exists():
            self.sha256 = sha256_path(self.path)

    @property
    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path.relative_to(root)) if root else str(self.path)
        d["inputs"] = [i.to_dict() for i in self.inputs]
        d["outputs"] = list(self.outputs)
        d["size_bytes"] = self.size_bytes if self.path.exists() else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path | None = None) -> "Artifact":
        d = dict(d)
        d.pop("size_bytes", None)
        path = Path(d.pop("path"))
        return cls(path=(root / path) if root else path,
                   inputs=tuple(InputSpec.from_dict(i) for i in d.pop("inputs")),
                   outputs=tuple(d.pop("outputs")), **d)

    def verify(self) -> None:
        """Raise :class:`ArtifactError` if the file is missing or changed since it was written."""
        if not self.path.exists():
            raise ArtifactError(f"{self.stage} artifact is missing: {self.path}")
        if self.sha256 and sha256_path(self.path) != self.sha256:
            raise ArtifactError(f"{self.stage} artifact {self.path.name} changed since it was written (sha256 mismatch)",
                                hint="re-export it")


@dataclass
class Manifest:
    """The contents of ``artifact.json``: the model, the request, the stages, the checks."""

    model: dict[str, Any]
    request: dict[str, Any]
    stages: list[Artifact]
    parity: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tools: dict[str, str] = field(default_factory=tool_versions)
    schema: str = SCHEMA

    @property
    def final(self) -> Artifact:
        return self.stages[-1]

    def stage(self, name: str) -> Artifact:
        for s in self.stages:
            if s.stage == name:
                return s
        raise ArtifactError(f"no stage '{name}' in this artifact", hint=f"stages: {[s.stage for s in self.stages]}")

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {"schema": self.schema, "created": self.created, "command": self.command,
                "model": self.model, "request": self.request,
                "stages": [s.to_dict(root) for s in self.stages],
                "final": self.stages[-1].stage if self.stages else None,
                "parity": self.parity, "reports": self.reports, "tools": self.tools}

    def write(self, root: Path) -> Path:
        path = Path(root) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(Path(root)), indent=2, default=_json_default))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, root: Path) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST if root.is_dir() else root
        if path.name != MANIFEST or not path.is_file():
            raise ArtifactError(f"no {MANIFEST} in {root}", hint="pass a folder written by 'edgekit export'")
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} is not a readable manifest: {exc}") from None
        if d.get("schema") != SCHEMA:
            raise ArtifactError(f"{path}: unknown manifest schema {d.get('schema')!r}", hint=f"expected {SCHEMA}")
        root = path.parent
        return cls(model=d["model"], request=d["request"],
                   stages=[Artifact.from_dict(s, root) for s in d["stages"]],
                   parity=d.get("parity", []), reports=d.get("reports", {}), command=d.get("command", ""),
                   created=d.get("created", ""), tools=d.get("tools", {}), schema=d["schema"])


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_dir(dest: Path, overwrite: bool = True, log: Any = None):
    """Context manager: a temporary folder beside ``dest``, renamed to ``dest`` on success.

    ``dest`` must not exist, be empty, or hold only a previous edgekit artifact (replaced
    only with ``overwrite``, i.e. ``--force``); see :mod:`edgekit.outdir` for the rules.
    """
    from .outdir import atomic_dir as _atomic_dir

    return _atomic_dir(dest, overwrite=overwrite, log=log)
