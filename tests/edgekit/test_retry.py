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


def _art(path, stage, data=b"x", spec=(InputSpec("input", (1, 3, 8, 8)),)):
    if path.suffix == ".d":
        path.mkdir()
        (path / "f").write_bytes(data)
    else:
        path.write_bytes(data)
    return Artifact(path=path, stage=stage, format="onnx", precision="int8", target="onnx", inputs=spec)


def test_supersede_sets_the_attempt_aside_and_restore_brings_back_the_best(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "user"
    work.mkdir()
    outside.mkdir()
    fp32 = _art(work / "m.onnx", "onnx", b"fp32")
    qdq = _art(work / "m.int8.onnx", "qdq", b"old")
    folder = _art(work / "m_openvino.d", "openvino", b"ir1")
    users = _art(outside / "keep.onnx", "ort")
    spare = _art(tmp_path / "spare1.onnx", "qdq", b"new")
    spare.meta = {"spare_step": {"file": "spare1.onnx", "float_added": "conv3"}, "float_layers": ["conv3"]}
    ref = _logits()
    first = [_comp("qdq", ref, ref), _comp("openvino", ref, _flipped(ref, 2), fidelity_ok=True)]
    kept = retry.Attempts(work, tmp_path / "scratch")
    out = kept.supersede([fp32, qdq, folder, users], 1, first, spare, prune=lambda a: a)
    assert [s.stage for s in out] == ["onnx", "qdq"]
    assert out[1].path == work / "m.int8.onnx" and out[1].path.read_bytes() == b"new"
    assert out[1].meta["spare_step"]["float_added"] == "conv3" and out[1].sha256 != qdq.sha256
    assert not folder.path.exists() and (tmp_path / "scratch" / "attempt1" / "m_openvino.d" / "f").is_file()
    assert (outside / "keep.onnx").read_bytes() == b"x" and fp32.path.read_bytes() == b"fp32"
    # the second attempt builds a worse artifact: the first comes back, files and verdicts
    second = [*out, _art(work / "m_openvino.d", "openvino", b"ir2")]
    worse = [_comp("qdq", ref, ref), _comp("openvino", ref, _flipped(ref, 9), fidelity_ok=True)]
    assert retry.score(first) > retry.score(worse)
    n, stages, comps = kept.restore(second, 1)
    assert n == 1 and stages[2].path.name == "m_openvino.d" and comps is not worse
    assert (work / "m.int8.onnx").read_bytes() == b"old" and (work / "m_openvino.d" / "f").read_bytes() == b"ir1"


def test_run_delivers_the_closest_attempt_or_the_last_that_built(tmp_path):
    from edgekit.console import Console
    from edgekit.errors import ExportError

    ref = _logits()
    flips = {1: 3, 2: 8, 3: 6}   # attempt -> flipped samples: every attempt misses a 99 % bar, the first least

    def case(fail_at=None):
        work = tmp_path / f"w{fail_at}"
        work.mkdir()
        qdq = _art(work / "m.int8.onnx", "qdq", b"q0")
        spares = []
        for i in (1, 2):
            sp = _art(tmp_path / f"s{fail_at}-{i}.onnx", "qdq", f"q{i}".encode())
            sp.meta = {"spare_step": {"float_added": f"conv{i}"}}
            spares.append(sp)
        attempt = {"n": 0}

        def build(stages):
            attempt["n"] += 1
            if attempt["n"] == fail_at:
                (work / "half.bin").write_bytes(b"partial")
                raise ExportError("openvino", "conversion failed")
            return [*stages, _art(work / "m.ir", "openvino", f"ir{attempt['n']}".encode())]

        def check(stages):
            return [_comp("qdq", ref, ref), _comp("openvino", ref, _flipped(ref, flips[attempt["n"]]), fidelity_ok=True)]

        console = Console(quiet=True)
        stages, comps = retry.run(build, check, [qdq], spares, 0, retry.Attempts(work, tmp_path / f"x{fail_at}"),
                                  console, prune=lambda a: a)
        return work, stages, comps, console.warnings

    work, stages, comps, warns = case()
    assert (work / "m.int8.onnx").read_bytes() == b"q0" and (work / "m.ir").read_bytes() == b"ir1"
    assert comps[-1].primary().top1 == pytest.approx(1 - 3 / 200)
    assert warns[-1].startswith("every further attempt missed the bar too: delivering attempt 1")
    assert sum(w.startswith("[attempt 2, superseded]") for w in warns) == 1
    work, stages, comps, warns = case(fail_at=2)
    assert (work / "m.ir").read_bytes() == b"ir1" and not (work / "half.bin").exists()
    assert "attempt 2 (a spare fallback step or the alternate calibration) failed to build" in warns[-1]
    with pytest.raises(ExportError):   # the first attempt has nothing to fall back on: the error stands
        case(fail_at=1)


def test_run_tries_the_alternate_calibration_once_the_spares_are_spent(tmp_path):
    """``more`` (the alternate calibration) is asked once, after the last spare missed, and its
    stages are attempts like the spares; if it raises, the closest attempt so far is delivered."""
    from edgekit.console import Console
    from edgekit.errors import CalibrationError

    ref = _logits()

    def case(flips, alt_raises=False, spares=True):
        work = tmp_path / f"w{''.join(map(str, flips))}{alt_raises}{spares}"
        work.mkdir()
        qdq = _art(work / "m.int8.onnx", "qdq", b"q0")
        sp = _art(tmp_path / f"s{work.name}.onnx", "qdq", b"q1")
        sp.meta = {"spare_step": {"float_added": "conv1"}}
        asked = []

        def more():
            asked.append(len(attempt))
            if alt_raises:
                raise CalibrationError("no layer to quantize")
            alt = _art(tmp_path / f"a{work.name}.onnx", "qdq", b"alt")
            alt.meta = {"alternate_calibration": {"activations": "uint8 where never negative"}}
            return [alt]

        attempt = []

        def build(stages):
            attempt.append(stages[0].path.read_bytes())
            return [*stages, _art(work / "m.pte", "executorch", f"pte{len(attempt)}".encode())]

        def check(stages):
            return [_comp("qdq", ref, ref),
                    _comp("executorch", ref, _flipped(ref, flips[len(attempt) - 1]), fidelity_ok=True)]

        console = Console(quiet=True)
        stages, comps = retry.run(build, check, [qdq], [sp] if spares else [], 0,
                                  retry.Attempts(work, tmp_path / f"x{work.name}"), console, prune=lambda a: a,
                                  more=more)
        return work, attempt, asked, comps, console.warnings

    # attempt 1 and the spare miss a 99 % bar; the alternate calibration passes and is delivered
    work, attempt, asked, comps, warns = case([6, 5, 0])
    assert attempt == [b"q0", b"q1", b"alt"] and asked == [2] and comps[-1].passed
    assert (work / "m.int8.onnx").read_bytes() == b"alt" and (work / "m.pte").read_bytes() == b"pte3"
    assert "taking the alternate calibration (uint8 where never negative activations) and rebuilding" in warns[-1]
    # the alternate calibration fails to run: the closest attempt (the spare, 5 flips) is delivered
    work, attempt, asked, comps, warns = case([6, 5], alt_raises=True)
    assert attempt == [b"q0", b"q1"] and asked == [2] and (work / "m.pte").read_bytes() == b"pte2"
    assert warns[-1] == "the alternate calibration failed: no layer to quantize"   # attempt 2 stays, the closest
    work, attempt, asked, comps, warns = case([5, 6], alt_raises=True)
    assert (work / "m.pte").read_bytes() == b"pte1" and (work / "m.int8.onnx").read_bytes() == b"q0"
    assert warns[-1].startswith("every further attempt missed the bar too: delivering attempt 1")
    # no spare steps and the alternate fails to run: the only attempt stands
    work, attempt, asked, comps, warns = case([6], alt_raises=True, spares=False)
    assert attempt == [b"q0"] and asked == [1] and (work / "m.pte").read_bytes() == b"pte1"
    assert retry.describe(_art(tmp_path / "d.onnx", "qdq")) == "the calibration"
    before = _art(tmp_path / "e.onnx", "qdq")
    before.meta = {"spare_step": {"step": 3, "before_margin": True, "float_layers": 6}}
    assert retry.describe(before) == "the calibration's first passing step, before its SQNR margin (6 float layers)"


def test_score_puts_the_delivered_artifact_first():
    """An attempt whose shared graph passes but whose artifact fails more criteria ranks below one
    whose shared graph fails while its artifact fails fewer (ExecuTorch on the uint8 and the
    signed calibrations of torchvision's MobileNetV2: top-1 and SQNR missed, against top-1 only)."""
    ref = _logits()
    noisy = _flipped(ref, 4) + np.random.default_rng(1).normal(scale=0.6, size=ref.shape).astype(np.float32)
    a = [_comp("qdq", ref, ref), _comp("executorch", ref, noisy, fidelity_ok=True)]
    b = [_comp("qdq", ref, _flipped(ref, 3)), _comp("executorch", ref, _flipped(ref, 4), fidelity_ok=True)]
    assert not a[0].quantization_failures and b[0].quantization_failures
    assert len(b[-1].quantization_failures) < len(a[-1].quantization_failures)
    assert retry.score(b) > retry.score(a)


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
    r, calls, out = _forced_lenet_export(tmp_path, monkeypatch)
    # asked after each attempt: the first (forced: retry), the second (passes: delivered)
    assert calls == [["onnx", "simplified", "qdq", "ort"]] * 2
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


def test_export_tries_the_alternate_calibration_and_records_it(tmp_path, monkeypatch):
    """The pipeline end to end (lenet5, trained weights from a checkpoint, --target onnx --int8,
    with the target declaring ``alternate_calibration`` as ExecuTorch and Core ML do): when the
    first calibration's attempts miss the bar (forced once here, with no spare steps), the export
    calibrates again with the other signedness, rebuilds, and the manifest's Q/DQ stage says so."""
    from calibration import spares
    from edgekit.targets import get_target

    monkeypatch.setattr(type(get_target("onnx")), "alternate_calibration", True)
    monkeypatch.setattr(spares, "stages", lambda art, folder: [])   # no spare steps: straight to the alternate
    r, calls, out = _forced_lenet_export(tmp_path, monkeypatch)
    assert len(calls) == 2
    qdq = {s.stage: s for s in r.manifest.stages}["qdq"]
    assert qdq.meta["alternate_calibration"] == {"activations": "signed int8", "instead_of": "uint8 where never negative",
                                                 "why": "every attempt on the first calibration missed the bar"}
    assert qdq.meta["unsigned_activations"] == [] and qdq.meta["options"]["unsigned"] is False
    warns = r.manifest.reports["warnings"]
    assert any("taking the alternate calibration (signed int8 activations)" in w for w in warns), warns
    assert r.exit_code == 0 and not any(p.name.startswith("alternate") for p in out.iterdir())


def test_a_targets_calibration_options_reach_its_first_calibration(tmp_path, monkeypatch):
    """``Exporter.calibration_options`` (ExecuTorch: ``add_inputs``, the points XNNPACK adds)
    are set on the target's first calibration, and its signedness comes from
    ``signed_activations`` as before."""
    import torch

    from edgekit import create_model
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import export
    from edgekit.targets import get_target
    from exporters.executorch.exporter import ExecuTorchTarget

    assert ExecuTorchTarget.calibration_options == {"add_inputs": True} and not ExecuTorchTarget.signed_activations
    monkeypatch.setattr(type(get_target("onnx")), "calibration_options", {"add_inputs": True})
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = tmp_path / "lenet.pt"
    torch.save(create_model("lenet5").state_dict(), ckpt)
    r = export(ExportRequest(model="lenet5", target="onnx", precision="int8", weights=ckpt, out=tmp_path / "out",
                             bench=False, samples=16, tolerance={"cosine": 0.9, "sqnr_db": 5.0}))
    options = {s.stage: s for s in r.manifest.stages}["qdq"].meta["options"]
    assert options["add_inputs"] is True and options["unsigned"] is True, options


def _forced_lenet_export(tmp_path, monkeypatch):
    """lenet5 with trained weights from a checkpoint, ``--target onnx --int8``, with
    ``retry.reason`` forced to ask for one more attempt after the first: (result, the stages
    ``reason`` saw at each call, the output folder)."""
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
    return r, calls, out
