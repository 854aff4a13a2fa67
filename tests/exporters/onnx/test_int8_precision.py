"""edgekit's ONNX Runtime sessions compute integer convolutions exactly on every x86 CPU.

Without VNNI, ONNX Runtime's default u8×s8 kernels add pairs of products in saturating 16-bit
lanes: 255 · 127 + 255 · 127 = 64770 comes out as 32767 (edgekit/ort_options.py). The model below
is a Q/DQ 1×1 convolution that ONNX Runtime fuses into QLinearConv with every input at 255 and
every weight at 127, so each pair saturates there unless the session asks for exact kernels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration import graph as g
from edgekit.bench.device import int8_saturates
from edgekit.specs import InputSpec
from exporters.onnx.runner import OrtRunner

C = 16


def _saturating_conv(path):
    inits = [numpy_helper.from_array(np.asarray(0.01, np.float32), "xs"),
             numpy_helper.from_array(np.asarray(0, np.uint8), "xz"),
             numpy_helper.from_array(np.full((1, C, 1, 1), 127, np.int8), "w"),
             numpy_helper.from_array(np.full((1,), 1 / 127, np.float32), "ws"),
             numpy_helper.from_array(np.zeros((1,), np.int8), "wz"),
             numpy_helper.from_array(np.asarray(0.2, np.float32), "ys"),
             numpy_helper.from_array(np.asarray(0, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_integer_convolutions_do_not_saturate_in_edgekit_sessions(tmp_path):
    path = tmp_path / "sat.onnx"
    _saturating_conv(path)
    x = np.full((1, C, 4, 4), 2.55, np.float32)   # quantizes to 255
    exact = C * 2.55                              # 40.8: each channel adds 255 · 0.01 · 127 / 127
    with OrtRunner(path, (InputSpec("x", (1, C, 4, 4)),)) as r:
        y = r.infer({"x": x})["out"]
        options = r._session.get_session_options()
        if int8_saturates():   # elsewhere the key is left out: the fast kernels are exact there
            assert options.get_session_config_entry("session.x64quantprecision") == "1"
    np.testing.assert_allclose(y, exact, atol=0.1)            # one output step of 0.2
    y = g.session(path).run(None, {"x": x})[0]                # the calibration's own sessions
    np.testing.assert_allclose(y, exact, atol=0.1)



# -- paired weights: ONNX Runtime's fast kernels exact without the key (edgekit/ort_options.py) ----------

def _qdq_layer(w: np.ndarray, op: str, group: int = 1):
    """x (uint8 at 1/255) -> int8 weight ``w`` (scale 0.01) -> op -> uint8 output (kept in range)."""
    k_in = w.shape[1] * int(np.prod(w.shape[2:])) if op == "Conv" else w.shape[0]
    ys = 1.27 * k_in / 200
    inits = [numpy_helper.from_array(np.asarray(1 / 255, np.float32), "xs"),
             numpy_helper.from_array(np.asarray(0, np.uint8), "xz"),
             numpy_helper.from_array(w.astype(np.int8), "w"),
             numpy_helper.from_array(np.full((w.shape[0] if op == "Conv" else w.shape[1],), 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros((w.shape[0] if op == "Conv" else w.shape[1],), np.int8), "wz"),
             numpy_helper.from_array(np.asarray(ys, np.float32), "ys"),
             numpy_helper.from_array(np.asarray(0, np.uint8), "yz")]
    if op == "Conv":
        layer = helper.make_node("Conv", ["xd", "wd"], ["y"], group=group, pads=[w.shape[2] // 2] * 4)
        cin = w.shape[1] * group
        x_shape = [1, cin, 6, 6]
    else:
        layer = helper.make_node("MatMul", ["xd", "wd"], ["y"])
        x_shape = [4, w.shape[0]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0 if op == "Conv" else 1),
             layer,
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(nodes, "pairs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), np.ones(x_shape, np.float32)


def _run(model, x, key: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if key:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _paired(shape, order=(0, 2, 3, 1)) -> np.ndarray:
    """Weights whose neighbours along ONNX Runtime's K order (kh, kw, channel) are 100 and 28: every
    pair at the budget, and the same channel at neighbouring taps 100 and 100."""
    flat_shape = [shape[i] for i in order]
    k = int(np.prod(flat_shape[1:]))
    row = np.where(np.arange(k) % 2 == 0, 100, 28)
    return np.broadcast_to(row.reshape(flat_shape[1:]), flat_shape).transpose(np.argsort(order)).copy()


PAIRED_LAYERS = {
    "3x3 conv, 32 channels": (lambda: _paired((16, 32, 3, 3)), "Conv", 1),
    "3x3 conv, 3 channels (pairs across taps)": (lambda: _paired((16, 3, 3, 3)), "Conv", 1),
    "grouped conv": (lambda: _paired((32, 16, 3, 3)), "Conv", 2),
    "matmul": (lambda: np.where(np.arange(64) % 2 == 0, 100, 28)[:, None].repeat(16, 1), "MatMul", 1),
    "depthwise, every weight 127": (lambda: np.full((32, 1, 3, 3), 127), "Conv", 32),
}


def test_weights_that_hold_the_pair_budget_in_kernel_order_need_no_key():
    from edgekit import ort_options

    for name, (make, op, group) in PAIRED_LAYERS.items():
        model, x = _qdq_layer(make(), op, group)
        assert ort_options.kernel_exact(model), name
        assert ort_options.session_config(model) == {}, name
        # the fast kernels compute the same integers as the exact ones, at every input 255
        np.testing.assert_array_equal(_run(model, x, key=False), _run(model, x, key=True), err_msg=name)


OVER_BUDGET = {
    "every weight 127": np.full((16, 32, 3, 3), 127),
    # paired along the channel axis at each tap (OpenVINO's order), not along ONNX Runtime's: the third
    # channel of one tap and the first of the next add in one lane
    "3 channels paired per tap": np.concatenate([np.full((16, 2, 3, 3), 64), np.full((16, 1, 3, 3), 127)], 1),
}


def test_weights_over_the_budget_keep_the_key():
    from edgekit import ort_options

    for name, w in OVER_BUDGET.items():
        model, _ = _qdq_layer(w, "Conv")
        assert not ort_options.kernel_exact(model), name
        assert ort_options.session_config(model) == ort_options.SESSION_CONFIG, name


def test_over_budget_weights_saturate_without_the_key_on_this_cpu():
    """The check above is the real rule of this CPU's kernels, not a guess: without VNNI the same
    layers compute wrong integers when the key is left out."""
    from edgekit.bench.device import int8_saturates

    if not int8_saturates():
        pytest.skip("this CPU has VNNI (or is not x86): its u8×s8 kernels do not saturate")
    for name, w in OVER_BUDGET.items():
        model, x = _qdq_layer(w, "Conv")
        assert np.abs(_run(model, x, key=False) - _run(model, x, key=True)).max() > 1.0, name


def test_over_budget_weights_are_exact_without_the_key_on_a_vnni_cpu():
    """Why edgekit's sessions leave the key out on CPUs with VNNI (edgekit/ort_options.needed_here):
    their u8×s8 kernels compute the same integers as the exact ones at every input 255."""
    from edgekit import ort_options

    if int8_saturates():
        pytest.skip("this CPU is x86 without VNNI: its u8×s8 kernels saturate (the test above)")
    assert not ort_options.needed_here()
    for name, w in OVER_BUDGET.items():
        model, x = _qdq_layer(w, "Conv")
        np.testing.assert_array_equal(_run(model, x, key=False), _run(model, x, key=True), err_msg=name)


def test_runner_asks_for_the_key_only_where_a_model_needs_it(tmp_path):
    for name, (w, exact) in {"paired": (_paired((16, 32, 3, 3)), True),
                             "over": (np.full((16, 32, 3, 3), 127), not int8_saturates())}.items():
        model, x = _qdq_layer(w, "Conv")
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        with OrtRunner(path) as r:
            config = r._session.get_session_options()
            got = config.get_session_config_entry("session.x64quantprecision") if not exact else None
            y = r.infer({"x": x})["out"]
        if exact:   # the key is not set at all
            with pytest.raises(RuntimeError):
                config.get_session_config_entry("session.x64quantprecision")
        else:
            assert got == "1", name
        np.testing.assert_array_equal(y, _run(model, x, key=True))   # the exact result either way
