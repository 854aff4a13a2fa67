"""edgekit's ONNX Runtime sessions compute integer convolutions exactly on every x86 CPU.

Without VNNI, ONNX Runtime's default u8×s8 kernels add pairs of products in saturating 16-bit
lanes: 255 · 127 + 255 · 127 = 64770 comes out as 32767 (edgekit/ort_options.py). The model below
is a Q/DQ 1×1 convolution that ONNX Runtime fuses into QLinearConv with every input at 255 and
every weight at 127, so each pair saturates there unless the session asks for exact kernels."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration import graph as g
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
        assert r._session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
    np.testing.assert_allclose(y, exact, atol=0.1)            # one output step of 0.2
    y = g.session(path).run(None, {"x": x})[0]                # the calibration's own sessions
    np.testing.assert_allclose(y, exact, atol=0.1)

