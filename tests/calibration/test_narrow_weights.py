"""Narrow weights ([-63, 63]) where x86 integer kernels without VNNI pair products.

Without VNNI, oneDNN (inside OpenVINO) and ONNX Runtime's default kernels add each pair of u8×s8
products in a saturating 16-bit lane: 255 · 127 · 2 = 64770 does not fit, 255 · 63 · 2 = 32130 does.
``Int8Options(narrow_weights=True)`` calibrates the layers those kernels run that way on the narrow
grid (calibration.qdq.narrow_qmax); depthwise convolutions keep [-127, 127]."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration import graph as g
from calibration import qdq
from calibration.quantize import quantize_int8
from edgekit.bench.device import int8_saturates
from tests.calibration.test_calibration import fast, tiny  # noqa: F401  (the module fixture)

C = 16


def _int8_weights(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith(qdq.INT8_SUFFIX)}


def test_narrow_weights_cover_every_pairing_layer_and_spare_depthwise(tiny, tmp_path):
    src, fs = tiny
    art = quantize_int8(src, tmp_path / "narrow.onnx", fs.calib, fs.heldout,
                        fast(narrow_weights=True, fallback=False, use_cache=False))
    weights = _int8_weights(art.path)
    depthwise = {k: w for k, w in weights.items() if w.ndim == 4 and w.shape[1] == 1}
    pairing = {k: w for k, w in weights.items() if k not in depthwise}
    assert len(depthwise) == 1 and len(pairing) == 5    # stem, expand, project, head, fc
    for k, w in pairing.items():
        assert np.abs(w.astype(int)).max() == qdq.NARROW_QMAX, k   # the channel maxima sit on the narrow bound
    assert np.abs(next(iter(depthwise.values())).astype(int)).max() == qdq.W_QMAX
    wide = _int8_weights(quantize_int8(src, tmp_path / "wide.onnx", fs.calib, fs.heldout,
                                       fast(fallback=False, use_cache=False)).path)
    assert all(np.abs(w.astype(int)).max() == qdq.W_QMAX for w in wide.values())


def _ones_conv() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.ones((1, C, 1, 1), np.float32), "w")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("narrow", [False, True])
def test_openvino_computes_narrow_weights_exactly(tmp_path, narrow):
    """A 1×1 convolution with every input at 255 and every weight on the bound: the narrow graph is
    exact on OpenVINO on any CPU; the [-127, 127] graph saturates on an x86 CPU without VNNI."""
    ov = pytest.importorskip("openvino")
    model = _ones_conv()
    targets = g.quant_targets(model)
    plan = qdq.QdqPlan(targets, {"x": 0.01}, unsigned={"x"},
                       weight_qmax=qdq.narrow_qmax(model, targets) if narrow else {})
    path = tmp_path / "probe.onnx"
    onnx.save(qdq.build(model, plan), str(path))
    x = np.full((1, C, 4, 4), 2.55, np.float32)           # quantizes to 255
    exact = C * 2.55                                      # 40.8: every channel adds 255 · 0.01
    np.testing.assert_allclose(g.session(path).run(None, {"x": x})[0], exact, rtol=1e-5)
    y = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    if narrow or not int8_saturates():
        np.testing.assert_allclose(y, exact, rtol=1e-5)
    else:
        assert float(y.max()) < 0.6 * exact               # 20.6 on an AVX2-only EPYC: pairs clipped at 32767


def test_openvino_target_narrows_where_the_cpu_saturates_or_when_asked():
    from edgekit.contracts import ExportRequest
    from edgekit.targets import get_target

    target = get_target("openvino")
    def opts(asked):
        return target.calibration_options_for(ExportRequest(model="m", target="openvino", precision="int8",
                                                            options={} if asked is None else {"ov_int8_weights": asked}))
    assert opts(None) == opts("auto") == ({"narrow_weights": True} if int8_saturates() else {})
    assert opts("narrow") == {"narrow_weights": True} and opts("full") == {}
    assert get_target("onnx").calibration_options_for(ExportRequest(model="m", target="onnx", precision="int8")) == {}
