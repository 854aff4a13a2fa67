"""The content-keyed export cache (exporters/onnx/export_cache.py): a hit gives the same bytes as
a fresh export, and anything the graph depends on (weights, a configuration attribute, the
input shape, the opset) changes the key. Real torch.onnx.export, real files."""
from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install 'edgekit[onnx]')")

import torch  # noqa: E402

from edgekit.specs import InputSpec  # noqa: E402
from exporters.onnx import export_cache  # noqa: E402
from exporters.onnx.exporter import export_onnx  # noqa: E402
from tests.tiny import tiny_model  # noqa: E402

SHAPE = (InputSpec("input", (1, 3, 32, 32)),)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_hit_is_the_fresh_export_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setenv(export_cache.ENV, str(tmp_path / "cache"))
    first = export_onnx(tiny_model(), SHAPE, tmp_path / "a.onnx")
    again = export_onnx(tiny_model(), SHAPE, tmp_path / "b.onnx")
    assert first.meta["export_cache"] == "stored" and again.meta["export_cache"] == "hit"
    assert _digest(tmp_path / "a.onnx") == _digest(tmp_path / "b.onnx")
    assert again.meta["node_counts"] == first.meta["node_counts"] and again.outputs == first.outputs
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1
    assert not list((tmp_path / "cache").glob(".*"))  # no temp file left behind
    monkeypatch.delenv(export_cache.ENV)
    fresh = export_onnx(tiny_model(), SHAPE, tmp_path / "c.onnx")
    assert "export_cache" not in fresh.meta and _digest(tmp_path / "c.onnx") == _digest(tmp_path / "a.onnx")


def _key(model, shape=SHAPE, opset=18) -> str:
    return export_cache.key(model.eval(), shape, opset, False, ("output",))


def test_what_the_graph_depends_on_changes_the_key():
    base = _key(tiny_model())
    assert _key(tiny_model()) == base                      # same code, same seeded weights
    heavier = tiny_model()
    with torch.no_grad():
        heavier[0].weight[0, 0, 0, 0] += 1e-3              # one weight
    relu6 = tiny_model()
    relu6[2].inplace = True                                # a configuration attribute, no weight changes
    strided = tiny_model()
    strided[0].stride = (1, 1)
    keys = {_key(heavier), _key(relu6), _key(strided), _key(tiny_model(), (InputSpec("input", (1, 3, 64, 64)),)),
            _key(tiny_model(), opset=17)}
    assert base not in keys and len(keys) == 5


def test_a_class_without_a_source_file_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(export_cache.ENV, str(tmp_path / "cache"))
    ns: dict = {}
    exec("import torch\nclass Made(torch.nn.Module):\n    def forward(self, x):\n        return x * 2\n", ns)
    assert export_cache.entry(ns["Made"]().eval(), SHAPE, 18, False, ("output",)) is None
    art = export_onnx(ns["Made"](), SHAPE, tmp_path / "m.onnx")
    assert "export_cache" not in art.meta and not (tmp_path / "cache").exists()
