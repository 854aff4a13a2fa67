"""Artifact folders as bytes: packed where they were built, verified where they land.

An artifact travels through Ray's object store as an uncompressed tar of its folder
(the manifest and every stage). The receiver checks the manifest's own sha256 (sent
beside the bytes) and then every stage's sha256 from the manifest
(:meth:`edgekit.artifact.Artifact.verify`), so a truncated or altered transfer is an
ArtifactError, never a silently wrong measurement.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from ..artifact import MANIFEST, Manifest, atomic_dir, sha256_path
from ..errors import ArtifactError


def pack(folder: Path, final_only: bool = False) -> tuple[bytes, str]:
    """(tar bytes of the folder, sha256 of its manifest). ``final_only``: the manifest and the
    final stage, all a device needs to check and time the artifact."""
    folder = Path(folder)
    paths = sorted(folder.rglob("*"))
    if final_only:
        final = Manifest.read(folder).final.path.resolve()
        paths = [p for p in paths if p.name == MANIFEST and p.parent == folder
                 or p.resolve() == final or final in p.resolve().parents]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in paths:
            tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return buf.getvalue(), sha256_path(folder / MANIFEST)


def _extract(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for m in tar.getmembers():
            if m.name.startswith(("/", "..")) or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                raise ArtifactError(f"artifact bundle holds an unsafe entry: {m.name}")
        tar.extractall(dest)  # entries checked above: plain files and folders inside dest


def verify(folder: Path, manifest_sha256: str, final_only: bool = False) -> Manifest:
    """The folder's manifest once it and every stage (``final_only``: the final stage) match
    what was sent; else ArtifactError."""
    if sha256_path(Path(folder) / MANIFEST) != manifest_sha256:
        raise ArtifactError(f"artifact manifest in {folder} does not match the one sent (sha256 mismatch)",
                            hint="the transfer was altered or truncated; rerun the cell")
    manifest = Manifest.read(folder)
    for stage in manifest.stages[-1:] if final_only else manifest.stages:
        stage.verify()
    return manifest


def unpack(data: bytes, manifest_sha256: str, dest: Path, final_only: bool = False) -> Manifest:
    """Extract into an existing empty folder ``dest`` and verify."""
    _extract(data, Path(dest))
    return verify(dest, manifest_sha256, final_only)


def land(data: bytes, manifest_sha256: str, dest: Path) -> Manifest:
    """Write an artifact to ``dest`` atomically (temporary folder + rename), verified first."""
    with atomic_dir(dest) as tmp:
        unpack(data, manifest_sha256, tmp)
    return verify(dest, manifest_sha256)
