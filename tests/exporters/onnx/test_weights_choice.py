"""Paired or full INT8 weights for ONNX Runtime on x86 CPUs without VNNI: with trained weights the
export calibrates both and delivers the one whose artifact runs faster (exporters/onnx/weights_choice.py)."""
from __future__ import annotations

from dataclasses import replace

from calibration.quantize import Int8Options, quantize_int8
from edgekit import ort_options
from edgekit.artifact import Artifact
from edgekit.bench.device import int8_saturates
from edgekit.console import Console
from edgekit.contracts import ExportRequest
from edgekit.feeds import photo_feeds
from edgekit.specs import InputSpec
from edgekit.targets import get_target
from tests.calibration.test_calibration import INPUT, PRE, fast, tiny  # noqa: F401  (the module fixture)


def test_onnx_target_weighs_full_weights_only_for_trained_auto_exports_on_saturating_cpus():
    onnx = get_target("onnx")

    def alts(trained, asked=None, device=None):
        req = ExportRequest(model="m", target="onnx", precision="int8", device=device,
                            options={} if asked is None else {"ort_int8_weights": asked})
        return onnx.calibration_alternatives(req, trained)
    assert alts(True) == alts(True, "auto") == ([{"paired_weights": False}] if int8_saturates() else [])
    # untrained: no fallback, so no float layers to trade: paired only; asked for: what was asked
    assert alts(False) == alts(True, "paired") == alts(True, "full") == []
    assert get_target("openvino").calibration_alternatives(ExportRequest(model="m", target="openvino"), True) == []


class _Chooses:
    """A test double of the Exporter protocol's ``faster_calibration``: always the second."""

    def faster_calibration(self, cals, fp32, feeds, request, log):
        return 1, {"chosen": "full", "candidates": [{"weights": "paired"}, {"weights": "full"}]}


def _file(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_chosen_calibration_takes_the_q_dq_stage_and_its_spare_steps(tmp_path):
    from edgekit.int8_stage import _faster

    work, spares = tmp_path / "work", tmp_path / "spares"
    path = _file(work / "m.int8.onnx", "paired graph")
    _file(spares / "spare1.onnx", "paired spare")
    alt = _file(spares / "calibration2" / "m.int8.onnx", "full graph")
    _file(spares / "calibration2" / "spare1.onnx", "full spare")
    inp = (InputSpec("x", (1, 3, 8, 8)),)
    arts = [Artifact(path, "qdq", "onnx", "int8", "onnx", inp, meta={"paired_weights": True}),
            Artifact(alt, "qdq", "onnx", "int8", "onnx", inp, meta={"paired_weights": False})]
    opts = [Int8Options(paired_weights=True), Int8Options()]
    int8: dict = {"options": opts[0]}
    got = _faster(arts, opts, _Chooses(), None, None, ExportRequest(model="m"), Console(quiet=True), path, spares, int8)
    assert got.path == path and path.read_text() == "full graph" and got.sha256 == arts[1].sha256
    assert (spares / "spare1.onnx").read_text() == "full spare"      # edgekit/retry.py reads these
    assert int8["options"] is opts[1]                                # an alternate calibration starts from it
    assert got.meta["weights_choice"]["chosen"] == "full" and got.meta["paired_weights"] is False


def test_choose_times_both_forms_and_skips_a_calibration_whose_gate_failed(tiny, tmp_path):  # noqa: F811
    from exporters.onnx.weights_choice import choose

    src, fs = tiny
    feeds = photo_feeds(PRE, INPUT, heldout=8, calib=48)
    cals = []
    for paired in (True, False):
        art = quantize_int8(src, tmp_path / f"q{int(paired)}.onnx", fs.calib, fs.heldout,
                            fast(cache_dir=tmp_path / "cache", paired_weights=paired), log=lambda m: None)
        art.meta["paired_weights"] = paired
        cals.append(art)
    req = ExportRequest(model="tiny", target="onnx", precision="int8", guard_seconds=0.2)
    k, rec = choose(cals, src, feeds, req, log=lambda m: None)
    cands = rec["candidates"]
    assert [c["weights"] for c in cands] == ["paired", "full"] and k in (0, 1)
    assert all(c["vs_fp32"] > 0 and c["p50_ms"] > 0 for c in cands)
    # the paired form's weights fit ONNX Runtime's pairs (its stem padded to 4 channels): no key
    assert cands[0]["session_config"] == {}
    assert cands[1]["session_config"] == ort_options.SESSION_CONFIG
    failed = replace(cals[0], meta={**cals[0].meta, "gate": {"passed": False}})
    passing = replace(cals[1], meta={**cals[1].meta, "gate": {"passed": True}})
    k, rec = choose([failed, passing], src, feeds, req, log=lambda m: None)
    assert k == 1 and rec["chosen"] == "full" and not rec["candidates"][0]["gate_passed"]
    # a gate that passed on the shared graph but that the calibration's `ort` form (what the export
    # delivers) misses: not eligible, whatever its speed; its manifest entry says so
    from edgekit.compare import Tolerance

    strict = replace(cals[0], meta={**cals[0].meta, "gate": {"passed": True, "tolerance": Tolerance(sqnr_db=200).to_dict()}})
    loose = replace(cals[1], meta={**cals[1].meta, "gate": {"passed": True, "tolerance": Tolerance(sqnr_db=5).to_dict()}})
    k, rec = choose([strict, loose], src, feeds, req, log=lambda m: None)
    first, second = rec["candidates"]
    assert k == 1 and not first["ort_form_passed"] and second["ort_form_passed"]
    assert first["ort_form"]["sqnr_db"] < 199.5 < 200 and "its ort form fails the gate" in rec["reason"]
    # when no form meets it, the gate-passing calibrations are weighed as before (the verdict then says why)
    k, rec = choose([strict, strict], src, feeds, req, log=lambda m: None)
    assert k in (0, 1) and not any(c["ort_form_passed"] for c in rec["candidates"])


def test_where_int8_beats_fp32_the_fewest_float_layers_win():
    """The decision alone (latency as a share of FP32's, float layers), measured figures of 2026-12-07."""
    from exporters.onnx.weights_choice import pick

    # Lite1: both beat FP32, full has 2 float layers against paired's 7: full, though 10 % slower
    assert pick([0, 1], {0: 0.80, 1: 0.89}, {0: 7, 1: 2}, 0.03) == (1, True)
    # Lite2: full only matches FP32, so speed decides: paired
    assert pick([0, 1], {0: 0.85, 1: 1.00}, {0: 9, 1: 3}, 0.03) == (0, False)
    # Lite0: same float layers: the faster
    assert pick([0, 1], {0: 0.84, 1: 0.96}, {0: 5, 1: 5}, 0.03) == (0, False)
    # neither beats FP32: the faster; within the tie, the first
    assert pick([0, 1], {0: 1.10, 1: 1.04}, {0: 17, 1: 11}, 0.03) == (1, False)
    assert pick([0, 1], {0: 1.05, 1: 1.04}, {0: 17, 1: 11}, 0.03) == (0, False)
    # one eligible calibration: it
    assert pick([1], {1: 0.5}, {0: 0, 1: 3}, 0.03) == (1, False)
