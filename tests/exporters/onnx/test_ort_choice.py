"""Which ONNX Runtime INT8 form is delivered: the fastest that passes the accuracy rule,
measured against FP32 in one interleaved run (exporters.onnx.quant.choose, issue 20)."""
from exporters.onnx.quant import SHARED, SPEED_TIE, choose


def _times(**ms):
    """A time_runners-shaped result: every round at the given latency (ms)."""
    return {k: {"p50_ms": v, "p90_ms": v, "round_p50_ms": [v] * 5} for k, v in ms.items()}


def _costs(**sqnr):
    return {k: {"sqnr_db_rewrite": v, "sqnr_db_shared": 26.0, "rejected": False} for k, v in sqnr.items()}


def test_the_fastest_passing_form_wins_and_the_reason_gives_the_ratios():
    t = _times(fp32=10.0, ort=5.0, ort_float_projections=6.0, shared_qdq=20.0)
    winner, why = choose(["ort", "ort_float_projections", SHARED], t, _costs(ort=25.5, ort_float_projections=25.9))
    assert winner == "ort"
    assert why.startswith("fastest passing form: 0.50x FP32's latency")
    assert "ort_float_projections 0.60x" in why and "shared_qdq 2.00x" in why


def test_a_rejected_form_is_never_chosen_however_fast():
    t = _times(fp32=10.0, ort=5.0, ort_float_projections=6.0, shared_qdq=20.0)
    winner, _ = choose(["ort_float_projections", SHARED], t, _costs(ort=20.0, ort_float_projections=25.9))
    assert winner == "ort_float_projections"
    winner, _ = choose([SHARED], t, _costs(ort=20.0, ort_float_projections=21.0))
    assert winner == SHARED


def test_within_the_speed_tie_the_form_closer_to_fp32_wins():
    near = 5.0 * (1 + SPEED_TIE / 2)
    t = _times(fp32=10.0, ort=5.0, ort_float_projections=near, shared_qdq=20.0)
    winner, why = choose(["ort", "ort_float_projections", SHARED], t, _costs(ort=25.5, ort_float_projections=25.9))
    assert winner == "ort_float_projections" and "closest to FP32 (25.90 dB)" in why
    # just outside the tie the faster one wins again
    far = 5.0 * (1 + SPEED_TIE * 2)
    t = _times(fp32=10.0, ort=5.0, ort_float_projections=far, shared_qdq=20.0)
    assert choose(["ort", "ort_float_projections", SHARED], t, _costs(ort=25.5, ort_float_projections=25.9))[0] == "ort"


def test_the_shared_graph_wins_when_it_is_the_fastest():
    t = _times(fp32=10.0, ort=9.0, ort_float_projections=9.5, shared_qdq=4.0)
    assert choose(["ort", "ort_float_projections", SHARED], t, _costs(ort=25.5, ort_float_projections=25.9))[0] \
        == SHARED


def test_without_timings_the_first_passing_form_is_delivered():
    winner, why = choose(["ort_float_projections", SHARED], None, None)
    assert winner == "ort_float_projections" and "no FP32 source" in why
