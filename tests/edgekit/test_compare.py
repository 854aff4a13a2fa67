import math

import numpy as np
import pytest

from edgekit.compare import Comparison, Tolerance, cosine, sqnr_db, tolerance_for, topk_agreement


def test_sqnr_matches_definition():
    ref = np.ones(100, dtype=np.float32)
    test = ref + 0.01
    # ‖ref‖ = 10, ‖noise‖ = 0.1 → 20·log10(100) = 40 dB
    assert sqnr_db(ref, test) == pytest.approx(40.0, abs=1e-3)
    assert sqnr_db(ref, ref) == math.inf


def test_cosine_and_topk():
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([[1.0, 2.0, 3.5], [1.0, 2.0, 3.0]])
    assert cosine(a, a) == pytest.approx(1.0)
    assert topk_agreement(a, b, 1) == (1, 2)
    assert topk_agreement(a, b, 3) == (2, 2)


def test_comparison_is_truthy_only_when_every_threshold_holds():
    ref = {"out": np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)}
    close = {"y": ref["out"] + 1e-6}
    far = {"y": ref["out"] + 1e-2}
    ok = Comparison("onnx", "r", "fp32", tolerance_for("fp32"))
    ok.add(ref, close)
    assert ok and ok.primary().max_abs < 1e-5 and ok.primary().top1 == 1.0
    bad = Comparison("onnx", "r", "fp32", tolerance_for("fp32"))
    bad.add(ref, far)
    assert not bad
    assert any("max_abs" in f for f in bad.failures)


def test_nonfinite_outputs_fail_and_shape_mismatch_raises():
    ref = {"out": np.ones((1, 5), np.float32)}
    c = Comparison("x", "r", "int8", Tolerance(cosine=0.5))
    c.add(ref, {"o": np.array([[1, 1, np.nan, 1, 1]], np.float32)})
    assert not c and "non-finite" in c.failures[0]
    with pytest.raises(ValueError):
        c.add(ref, {"o": np.ones((1, 4), np.float32)})


def test_empty_comparison_does_not_pass():
    assert not Comparison("x", "r", "fp32", tolerance_for("fp32"))


def test_max_abs_threshold_scales_with_large_outputs_only():
    tol = Tolerance(max_abs=1e-4)
    small = Comparison("s", "r", "fp32", tol)
    small.add({"o": np.full((1, 4), 5.0)}, {"o": np.full((1, 4), 5.0 + 2e-4)})
    assert not small  # peak 5 <= 10: absolute 1e-4 holds
    large = Comparison("l", "r", "fp32", tol)
    large.add({"o": np.full((1, 4), 40.0)}, {"o": np.full((1, 4), 40.0 + 2e-4)})
    assert large  # peak 40: limit 4e-4
    large.add({"o": np.full((1, 4), 40.0)}, {"o": np.full((1, 4), 40.0 + 5e-4)})
    assert not large


def test_top1_failures_say_how_many_flips_were_near_ties():
    from edgekit.compare import NEAR_TIE_MARGIN, OutputScore, top2_margin

    ref = np.array([[5.0, 4.99, 0.0],    # near tie (softmax margin ~0.002), flipped below
                    [9.0, 0.0, 0.0],     # decisive, flipped below
                    [0.0, 7.0, 1.0],     # decisive, kept
                    [2.0, 2.02, 0.0]])   # near tie, kept
    test = np.array([[4.99, 5.0, 0.0], [0.0, 9.0, 0.0], [0.0, 7.0, 1.0], [2.0, 2.03, 0.0]])
    m = top2_margin(ref)
    assert (m < NEAR_TIE_MARGIN).tolist() == [True, False, False, True]
    probs = np.array([[0.5, 0.48, 0.02], [0.9, 0.05, 0.05]])  # already probabilities: used as they are
    np.testing.assert_allclose(top2_margin(probs), [0.02, 0.85])
    s = OutputScore("out")
    s.add(ref, test)
    assert (s.rows, s.top1_hits, s.near_ties, s.near_tie_misses) == (4, 2, 2, 1)
    [msg] = s.failures(Tolerance(top1=0.98))
    assert msg.startswith("top1 50.0% < 98%") and "1 of 2 disagreements on near-ties" in msg
    assert "2 of 4 samples" in msg and s.to_dict()["near_ties"] == 2
