"""calibration/lean.py: the fallback's second pass, a cheaper float set at the same accuracy."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration import lean
from calibration.sensitivity import LayerSensitivity


def _model():
    """stem 3→8 3×3 at 32×32, depthwise 8 3×3 at 32×32, projection 8→4 1×1, Gemm 4·32·32 → 10."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w_stem", (8, 3, 3, 3)), ("w_dw", (8, 1, 3, 3)), ("w_proj", (4, 8, 1, 1)), ("w_fc", (10, 4096)))]
    nodes = [helper.make_node("Conv", ["x", "w_stem"], ["a"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_dw"], ["b"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Conv", ["b", "w_proj"], ["c"], name="proj"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w_fc"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_costs_count_macs_elements_and_weights():
    c = lean.float_costs(_model(), ["stem", "dw", "proj", "fc"])
    e, w = lean.ELEMENT_WEIGHT, lean.WEIGHT_WEIGHT
    hw = 32 * 32
    assert c["stem"] == pytest.approx((8 * hw * 27 + e * (3 * hw + 8 * hw) + w * 216) / 1e6)
    assert c["dw"] == pytest.approx((8 * hw * 9 + e * (16 * hw) + w * 72) / 1e6)
    assert c["proj"] == pytest.approx((4 * hw * 8 + e * (12 * hw) + w * 32) / 1e6)
    assert c["fc"] == pytest.approx((40960 + e * (4096 + 10) + w * 40960) / 1e6)


def test_order_is_error_power_per_unit_of_cost():
    ranking = [LayerSensitivity("a", "Conv", 20.0), LayerSensitivity("b", "Conv", 30.0),
               LayerSensitivity("c", "Conv", 33.0)]
    # a: 1e-2 / 100 = 1e-4; b: 1e-3 / 1 = 1e-3; c: 5e-4 / 10 = 5e-5
    costs = {"a": 100.0, "b": 1.0, "c": 10.0}
    assert [s.node for s in lean.order(ranking, costs)] == ["b", "a", "c"]


class _Score:
    """A gate result double: truthy when passed, with primary().sqnr_db/top1 (our own protocol)."""

    def __init__(self, passed: bool, sqnr: float):
        self.passed, self.sqnr_db, self.top1 = passed, sqnr, 0.97

    def __bool__(self):
        return self.passed

    def primary(self):
        return self


RANKING = [LayerSensitivity("big", "Conv", 26.0), LayerSensitivity("wide", "Conv", 30.0),
           LayerSensitivity("mid", "Conv", 31.0), LayerSensitivity("late1", "Conv", 32.0),
           LayerSensitivity("late2", "Conv", 33.0)]
COSTS = {"big": 50.0, "wide": 100.0, "mid": 40.0, "late1": 2.0, "late2": 2.0}


def _gate(table):
    calls = []

    def score(floats):
        calls.append(frozenset(floats))
        passed, sq = table(frozenset(floats))
        return (f"lean{len(floats)}.onnx", _Score(passed, sq))
    return score, calls


def test_search_adopts_the_first_cheaper_set_that_passes_as_accurately():
    # damage-first passed with {big, wide, mid} at 25.8 dB (cost 190); the cost-aware order is
    # late1, late2, big, ...: {late1, late2, big} passes at 25.7 dB, cost 54
    score, calls = _gate(lambda f: (f >= {"big", "late1"} and len(f) >= 3, 25.7 if len(f) >= 3 else 24.0))
    out, found = lean.search(RANKING, {"big", "wide", "mid"}, 25.8, COSTS, score, lambda m: None)
    assert out.adopted and out.floats == {"late1", "late2", "big"} and found[0] == "lean3.onnx"
    assert out.cost == pytest.approx(54.0) and out.first_cost == pytest.approx(190.0)
    assert [s["float"] for s in out.steps] == ["late1", "late2", "big"] and len(calls) == 3
    assert out.to_dict()["adopted"] is True


def test_search_passes_over_a_pass_that_costs_accuracy():
    # {late1, late2} passes but 0.5 dB below the damage-first set: not adopted; one more layer is
    # within MAX_SQNR_LOSS_DB and is
    def table(f):
        return (True, 25.3) if len(f) == 2 else (True, 25.8 - lean.MAX_SQNR_LOSS_DB / 2) if len(f) == 3 else (False, 24.0)
    score, _ = _gate(table)
    out, found = lean.search(RANKING, {"big", "wide", "mid"}, 25.8, COSTS, score, lambda m: None)
    assert out.adopted and len(out.floats) == 3 and found is not None


def test_search_keeps_the_damage_first_set_when_nothing_cheaper_passes():
    logs = []
    score, calls = _gate(lambda f: (False, 24.0))
    out, found = lean.search(RANKING, {"big", "wide", "mid"}, 25.8, COSTS, score, logs.append)
    assert not out.adopted and found is None and out.floats == {"big", "wide", "mid"}
    # late1, late2, big tried (3 = the damage-first count), then the budget stops it
    assert len(calls) == 3 and "at most 3 layers" in out.reason and "keeping the damage-first set" in logs[-1]


def test_search_stops_before_a_set_that_saves_too_little():
    # damage-first {big, wide, mid} costs 190; the order is big, mid, late1: {big, mid} costs 90,
    # {big, mid, late1} 150 > 75 % of 190, so it stops before scoring that
    costs = {**COSTS, "late1": 60.0, "late2": 60.0}
    score, calls = _gate(lambda f: (False, 24.0))
    out, found = lean.search(RANKING, {"big", "wide", "mid"}, 25.8, costs, score, lambda m: None)
    assert not out.adopted and found is None and len(calls) == 2 and "more than 75%" in out.reason


def test_search_skips_a_single_layer_set_and_the_same_set():
    score, calls = _gate(lambda f: (True, 30.0))
    out, _ = lean.search(RANKING, {"big"}, 25.8, COSTS, score, lambda m: None)
    assert not out.adopted and not calls and "one layer" in out.reason
    # the cost-aware order reaching exactly the damage-first set: nothing new to score
    cheap = {"big": 1.0, "wide": 1.0, "mid": 100.0, "late1": 100.0, "late2": 100.0}
    score, calls = _gate(lambda f: (False, 24.0))
    out, _ = lean.search(RANKING, {"big", "wide"}, 25.8, cheap, score, lambda m: None)
    assert not out.adopted and "same set" in out.reason and len(calls) == 1
