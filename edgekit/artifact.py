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

from .errors import ArtifactError, UsageError, first_line  # noqa: F401
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


def replace_file(path: Path, write) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which then
    replaces ``path`` in one rename; the temporary file never outlives a failure."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        """A stage from its manifest entry. With ``root`` (an artifact folder) the path must be
        relative and resolve inside ``root``: a manifest names data, never a file elsewhere."""
        d = dict(d)
        d.pop("size_bytes", None)
        path = Path(d.pop("path"))
        if root is not None:
            path = inside(root, path, f"stage '{d.get('stage')}'")
        return cls(path=path, inputs=tuple(InputSpec.from_dict(i) for i in d.pop("inputs")),
                   outputs=tuple(d.pop("outputs")), **d)

    def verify(self, root: Path | None = None) -> None:
        """Raise :class:`ArtifactError` if the file is missing, has no sha256, or changed since it
        was written. With ``root``: also if any file of it resolves outside ``root`` (a symlink)."""
        if not self.sha256:
            raise ArtifactError(f"{self.stage} artifact {self.path.name} has no sha256: it cannot be verified",
                                hint="re-export it with edgekit")
        try:
            if not self.path.exists():
                raise ArtifactError(f"{self.stage} artifact is missing: {self.path}")
            if root is not None:
                top = Path(root).resolve()
                for f in [self.path, *(sorted(self.path.rglob("*")) if self.path.is_dir() else [])]:
                    if not f.resolve().is_relative_to(top):
                        raise ArtifactError(f"stage '{self.stage}': {f.name} leads outside the artifact folder "
                                            "(a symlink)", hint="a manifest may only name files in its own folder")
            digest = sha256_path(self.path)
        except OSError as exc:  # unreadable, a name too long, a symlink loop
            raise ArtifactError(f"{self.stage} artifact {self.path.name} cannot be read: "
                                f"{exc.strerror or exc}") from None
        if digest != self.sha256:
            raise ArtifactError(f"{self.stage} artifact {self.path.name} changed since it was written (sha256 mismatch)",
                                hint="re-export it")


def inside(root: Path, rel: Path, what: str) -> Path:
    """``root / rel`` when ``rel`` is relative and resolves (symlinks followed) inside ``root``;
    otherwise an :class:`ArtifactError`."""
    root = Path(root)
    rel = Path(rel)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ArtifactError(f"{what}: path {str(rel)!r} is not inside the artifact folder",
                            hint="a manifest may only name files in its own folder")
    path = root / rel
    if "\0" in str(rel):
        raise ArtifactError(f"{what}: path {str(rel)!r} holds a NUL character")
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):  # outside root, or a symlink loop
        raise ArtifactError(f"{what}: path {str(rel)!r} leads outside the artifact folder (a symlink)",
                            hint="a manifest may only name files in its own folder") from None
    return path


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
    root: Path | None = field(default=None, repr=False, compare=False)  # the folder it was read from

    @property
    def final(self) -> Artifact:
        if not self.stages:
            raise ArtifactError("this artifact has no stages (a --dry-run manifest?)", hint="re-export it")
        return self.stages[-1]

    def verify(self) -> None:
        """Verify every stage (sha256 present and matching, files inside the artifact folder)."""
        for s in self.stages:
            s.verify(self.root)

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
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            why = first_line(exc, None)
            raise ArtifactError(f"{path} is not a readable manifest: {why}") from None
        check_manifest(d, path)
        root = path.parent
        return cls(model=d["model"], request=d["request"],
                   stages=[Artifact.from_dict(st, root) for st in d["stages"]],
                   parity=d.get("parity", []), reports=d.get("reports", {}), command=d.get("command") or "",
                   created=d.get("created") or "", tools=d.get("tools", {}), schema=d["schema"], root=root)


# The manifest's schema: what each field must be. A manifest is data from anywhere (an artifact
# folder can be handed over by anyone), so it is checked whole before any field is used.
_STR, _OPT_STR = (str,), (str, type(None))
_STAGE_FIELDS = {"path": _STR, "stage": _STR, "format": _STR, "precision": _STR, "target": _STR,
                 "inputs": (list,), "sha256": _STR}
_STAGE_OPTIONAL = {"outputs": (list,), "parent": _OPT_STR, "meta": (dict,), "tools": (dict,),
                   "size_bytes": (int, type(None))}
_INPUT_FIELDS = {"name": _STR, "shape": (list,), "dtype": _STR, "layout": _STR, "dynamic_batch": (bool,)}
_TOP_OPTIONAL = {"parity": (list,), "reports": (dict,), "command": _OPT_STR, "created": _OPT_STR,
                 "tools": (dict,), "final": _OPT_STR}


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _field(where: str, d: dict, key: str, types: tuple, required: bool) -> None:
    if key not in d:
        if required:
            raise ArtifactError(f"{where}: manifest field '{key}' is missing", hint="re-export the artifact")
        return
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        want = " or ".join(_kind(t()) if t is not type(None) else "null" for t in types)
        raise ArtifactError(f"{where}: manifest field '{key}' must be {want}, got {_kind(v)}",
                            hint="re-export the artifact")


def check_manifest(d: Any, path: Path | str = MANIFEST) -> None:
    """Raise a one-line :class:`ArtifactError` naming the first field of ``d`` (parsed
    ``artifact.json``) that does not fit the schema."""
    where = str(path)
    if not isinstance(d, dict):
        raise ArtifactError(f"{where} is not an edgekit manifest (top level is {_kind(d)}, not an object)")
    if d.get("schema") != SCHEMA:
        raise ArtifactError(f"{where}: unknown manifest schema {d.get('schema')!r}", hint=f"expected {SCHEMA}")
    for key in ("model", "request"):
        _field(where, d, key, (dict,), True)
    _field(where, d, "stages", (list,), True)
    for key, types in _TOP_OPTIONAL.items():
        _field(where, d, key, types, False)
    for i, c in enumerate(d.get("parity", [])):
        if not isinstance(c, dict):
            raise ArtifactError(f"{where}: parity[{i}] must be an object, got {_kind(c)}",
                                hint="re-export the artifact")
    stab = d.get("reports", {}).get("reference_stability")
    if stab is not None and not isinstance(stab, dict):
        raise ArtifactError(f"{where}: reports.reference_stability must be an object or null, got {_kind(stab)}")
    for i, st in enumerate(d["stages"]):
        w = f"{where}: stages[{i}]"
        if not isinstance(st, dict):
            raise ArtifactError(f"{w} must be an object, got {_kind(st)}", hint="re-export the artifact")
        unknown = sorted(set(st) - set(_STAGE_FIELDS) - set(_STAGE_OPTIONAL), key=str)
        if unknown:
            raise ArtifactError(f"{w}: unknown manifest field {unknown[0]!r}", hint="re-export the artifact")
        for key, types in _STAGE_FIELDS.items():
            _field(w, st, key, types, True)
        for key, types in _STAGE_OPTIONAL.items():
            _field(w, st, key, types, False)
        for key in ("stage", "format", "precision", "target", "path", "sha256"):
            if not st[key].isprintable():  # these reach messages: one line, no terminal escapes
                raise ArtifactError(f"{w}: manifest field '{key}' holds control characters: {st[key]!r}")
        if not st["sha256"]:
            raise ArtifactError(f"{w}: stage '{st['stage']}' has an empty sha256, so it cannot be verified",
                                hint="re-export the artifact")
        if not st["path"]:
            raise ArtifactError(f"{w}: manifest field 'path' is empty", hint="re-export the artifact")
        if not all(isinstance(o, str) for o in st.get("outputs", [])):
            raise ArtifactError(f"{w}: manifest field 'outputs' must be a list of strings")
        for j, inp in enumerate(st["inputs"]):
            wi = f"{w}.inputs[{j}]"
            if not isinstance(inp, dict):
                raise ArtifactError(f"{wi} must be an object, got {_kind(inp)}", hint="re-export the artifact")
            unknown = sorted(set(inp) - set(_INPUT_FIELDS), key=str)
            if unknown:
                raise ArtifactError(f"{wi}: unknown manifest field {unknown[0]!r}", hint="re-export the artifact")
            _field(wi, inp, "shape", (list,), True)
            for key, types in _INPUT_FIELDS.items():
                _field(wi, inp, key, types, False)
            if not inp["shape"] or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                           for n in inp["shape"]):
                raise ArtifactError(f"{wi}: manifest field 'shape' must be a list of positive integers",
                                    hint="re-export the artifact")


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
