"""edgekit/retry.py: when a delivered INT8 artifact may take a spare fallback step, and how the
stage list is rebuilt. The spare graphs themselves: tests/calibration/test_calibration.py."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit import retry, verdict
from edgekit.artifact import Artifact
from edgekit.compare import Comparison
from edgekit.specs import InputSpec


def _logits(n=200, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, classes)).astype(np.float32)
    x[np.arange(n), rng.integers(0, classes, n)] += 6.0
    return x


def _comp(stage, ref, test, trained=True, fidelity_ok=None):
    c = Comparison(stage, "runner", "int8", verdict.quantization_tolerance("int8", trained), yardstick_top1=1.0)
    c.add({"o": ref}, {"o": test})
    if fidelity_ok is not None:
        f = Comparison(stage, "runner", "int8", verdict.fidelity_tolerance("int8"), reference="qdq (onnxruntime)")
        f.add({"o": test}, {"o": test if fidelity_ok else test + 5 * np.abs(test).mean()})
        c.fidelity = f
    return c


def _flipped(ref, k):
    """``ref`` with the top-1 of ``k`` rows swapped with their runner-up (top-1 100 % − k rows)."""
    out = ref.copy()
    for i in range(k):
        a, b = np.argsort(ref[i])[-2:]
        out[i, a], out[i, b] = ref[i, b], ref[i, a]
    return out


def test_a_target_that_misses_the_bar_with_faithful_execution_takes_a_spare_step():
    ref = _logits()
    shared = _comp("qdq", ref, ref)
    target = _comp("openvino", ref, _flipped(ref, 6), fidelity_ok=True)   # 97.0 % < 99.0 % (yardstick 100 %)
    assert shared.passed and not target.passed
    why = retry.reason([shared, target])
    assert why is not None and why.startswith("openvino: o: ")
    assert any("top1 97.0%" in f for f in target.quantization_failures)


@pytest.mark.parametrize("case", ["passing", "untrained", "fidelity failed", "fp16"])
def test_no_spare_step_where_it_cannot_help_or_is_not_asked(case):
    ref = _logits()
    if case == "passing":
        comps = [_comp("qdq", ref, ref), _comp("openvino", ref, ref, fidelity_ok=True)]
    elif case == "untrained":   # nothing assessed: 50 flips are not a failure
        comps = [_comp("qdq", ref, ref, trained=False), _comp("ort", ref, _flipped(ref, 50), trained=False)]
    elif case == "fidelity failed":   # a runtime that computes something else: reported, not papered over
        comps = [_comp("qdq", ref, ref), _comp("openvino", ref, _flipped(ref, 6), fidelity_ok=False)]
    else:
        c = _comp("fp16", ref, _flipped(ref, 6))
        c.precision = "fp16"
        comps = [c]
    assert comps[-1].passed == (case in ("passing", "untrained"))
    assert retry.reason(comps) is None


def test_swap_replaces_the_qdq_stage_and_removes_later_artifacts_inside_work_only(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "user"
    work.mkdir()
    outside.mkdir()
    spec = (InputSpec("input", (1, 3, 8, 8)),)

    def art(path, stage, data=b"x"):
        path.write_bytes(data) if not path.suffix == ".d" else (path.mkdir(), (path / "f").write_bytes(data))
        return Artifact(path=path, stage=stage, format="onnx", precision="int8", target="onnx", inputs=spec)

    qdq = art(work / "m.int8.onnx", "qdq", b"old")
    folder = art(work / "m_openvino.d", "openvino")
    users = art(outside / "keep.onnx", "ort")
    spare = art(tmp_path / "spare1.onnx", "qdq", b"new")
    spare.meta = {"spare_step": {"file": "spare1.onnx", "float_added": "conv3"}, "float_layers": ["conv3"]}
    fp32 = art(work / "m.onnx", "onnx", b"fp32")
    out = retry.swap([fp32, qdq, folder, users], 1, spare, work, prune=lambda a: a)
    assert [s.stage for s in out] == ["onnx", "qdq"]
    assert out[1].path == work / "m.int8.onnx" and out[1].path.read_bytes() == b"new"
    assert out[1].meta["spare_step"]["float_added"] == "conv3" and out[1].sha256 != qdq.sha256
    assert not folder.path.exists() and (outside / "keep.onnx").read_bytes() == b"x"
    assert fp32.path.read_bytes() == b"fp32"


def test_warnings_of_a_superseded_attempt_are_marked():
    w = ["calibrating on bundled photos", "gate failed: top1 94.0%", "openvino: top1 94.0%: taking ..."]
    retry.superseded(w, 1, 1)
    assert w[0] == "calibrating on bundled photos" and all(x.startswith("[attempt 1, superseded] ") for x in w[1:])


def test_export_takes_a_spare_step_rebuilds_the_target_and_records_it(tmp_path, monkeypatch):
    """The pipeline end to end (lenet5, trained weights from a checkpoint, --target onnx --int8):
    when ``retry.reason`` reports a failed artifact (forced here, once: lenet5 on photos passes),
    the Q/DQ stage becomes the calibration's first spare, the ONNX Runtime form is rebuilt from
    it, parity runs again, and the manifest records the step and marks the first attempt's
    warnings superseded."""
    import torch

    from edgekit import create_model
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import export

    ckpt = tmp_path / "lenet.pt"
    torch.save(create_model("lenet5").state_dict(), ckpt)
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def forced(comps):
        calls.append([c.stage for c in comps])
        return "ort: forced by the test" if len(calls) == 1 else None

    monkeypatch.setattr(retry, "reason", forced)
    out = tmp_path / "out"
    r = export(ExportRequest(model="lenet5", target="onnx", precision="int8", weights=ckpt, out=out, bench=False,
                             samples=16, tolerance={"cosine": 0.9, "sqnr_db": 5.0}))
    # lenet5's float budget (35 % of 5 layers) leaves one spare: once taken, nothing is left to ask about
    assert calls == [["onnx", "simplified", "qdq", "ort"]]
    stages = {s.stage: s for s in r.manifest.stages}
    qdq = stages["qdq"]
    assert qdq.meta["spare_step"]["float_added"] in qdq.meta["float_layers"]
    assert qdq.meta["gate"]["fallback"][-1]["spare"] is True
    assert (out / qdq.path.name).is_file() and stages["ort"].meta["derived_from"] == qdq.path.name
    warns = r.manifest.reports["warnings"]
    assert any(w.startswith("[attempt 1, superseded] ort: forced by the test") for w in warns), warns
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == \
        sorted(s.path.name for s in r.manifest.stages if s.format == "onnx")   # no leftover of attempt 1
    assert r.exit_code == 0
