import json

import pytest

from edgekit.artifact import Artifact, Manifest, atomic_dir
from edgekit.errors import ArtifactError, UsageError
from edgekit.specs import InputSpec


def _manifest(root, name="m.onnx"):
    f = root / name
    f.write_bytes(b"graph")
    art = Artifact(path=f, stage="onnx", format="onnx", precision="fp32", target="onnx", inputs=(InputSpec(),))
    return Manifest(model={"name": "m"}, request={"target": "onnx"}, stages=[art])


def test_failed_write_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as work:
            (work / "half.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_old_artifact_intact(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as work:
        _manifest(work).write(work)
    before = (dest / "artifact.json").read_text()
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(dest) as work:
            (work / "new.onnx").write_bytes(b"x")
            raise KeyboardInterrupt
    assert (dest / "artifact.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_foreign_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError):
        with atomic_dir(tmp_path):
            pass
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_manifest_round_trip_and_tamper_detection(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as work:
        _manifest(work).write(work)
    m = Manifest.read(dest)
    assert m.final.path == dest / "m.onnx" and len(m.final.sha256) == 64
    assert json.loads((dest / "artifact.json").read_text())["stages"][0]["path"] == "m.onnx"
    m.final.verify()
    (dest / "m.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="changed"):
        m.final.verify()


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        Manifest.read(tmp_path)
    with pytest.raises(ArtifactError, match="no artifact.json"):
        Manifest.read(tmp_path / "missing")
