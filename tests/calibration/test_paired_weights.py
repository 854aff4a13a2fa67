"""Paired weights: every two weights that x86 integer kernels without VNNI add in one 16-bit lane
hold |a| + |b| <= 128 (calibration.qdq.PAIR_BUDGET).

Without VNNI, oneDNN (inside OpenVINO) adds the u8×s8 products of input channels 2j and 2j+1 in a
saturating 16-bit lane: 255 · 127 · 2 = 64770 does not fit, 255 · 128 = 32640 does.
``Int8Options(paired_weights=True)`` calibrates those layers to the budget on the 8-bit grid;
depthwise convolutions are left out (32-bit products)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from calibration import graph as g
from calibration import qdq
from calibration.layerwise import gptq_rows, partners
from calibration.quantize import quantize_int8
from edgekit.bench.device import int8_saturates
from tests.calibration.test_calibration import fast, tiny  # noqa: F401  (the module fixture)

C = 16


def _int8_weights(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t).astype(int) for t in m.graph.initializer
            if t.name.endswith(qdq.INT8_SUFFIX)}


def _pair_sums(w: np.ndarray, axis: int) -> np.ndarray:
    a = np.abs(np.moveaxis(w, axis, 0))
    n = a.shape[0] // 2 * 2
    return a[0:n:2] + a[1:n:2]


def test_paired_scales_never_lose_to_the_narrow_grid():
    """[-63, 63] (m = 63) is one of the candidates, and every pair of it fits the budget."""
    w = np.random.default_rng(0).standard_t(4, size=(32, 48, 1, 1)).astype(np.float32)
    s = qdq.paired_scales(w, 0, 1)
    narrow = np.abs(w).reshape(32, -1).max(1) / 63
    def err(scales):
        view = scales.reshape(-1, 1, 1, 1)
        q = qdq.quantize_weight(w, 0, scales=scales, pair_axis=1)[0].astype(int)
        assert _pair_sums(q, 1).max() <= qdq.PAIR_BUDGET
        return ((q * view - w) ** 2).reshape(32, -1).sum(1)
    assert (err(s) <= err(narrow.astype(np.float32)) + 1e-9).all()
    assert err(s).sum() < 0.8 * err(narrow.astype(np.float32)).sum()


def test_limit_pairs_gives_an_over_budget_pair_the_closest_magnitudes():
    q = np.array([[100, 100, 5], [-127, 40, 127], [60, -60, -9]])
    w = np.array([[100.2, 99.6, 5.0], [-127.0, 40.4, 127.0], [60.1, -59.8, -9.2]])
    out = qdq.limit_pairs(q, w, axis=1)
    # (128 + 100.2 - 99.6) / 2 = 64.3; (128 + 127 - 40.4) / 2 = 107.3; the third row's pair fits
    np.testing.assert_array_equal(out, [[64, 64, 5], [-107, 21, 127], [60, -60, -9]])
    np.testing.assert_array_equal(qdq.limit_pairs(q.T, w.T, axis=0), out.T)


def test_gptq_rounding_keeps_every_pair_within_the_budget():
    gen = torch.Generator().manual_seed(0)
    d, rows = 3 * 9, 8                                   # a stem: 3 input channels, 3×3 taps
    w = torch.randn(1, rows, d, generator=gen, dtype=torch.float64)
    w[:, :, :9] *= 4                                     # channel 0 large: it pairs with channel 1
    w[:, :, 9:18] *= 4
    x = torch.randn(d, 256, generator=gen, dtype=torch.float64)
    h = (x @ x.T / 256).unsqueeze(0)
    s = w.abs().amax(-1) / qdq.W_QMAX
    free = gptq_rows(w, h, s, 0.01) / s.unsqueeze(-1)
    paired = gptq_rows(w, h, s, 0.01, partners(d, 3)) / s.unsqueeze(-1)
    ints = paired.round().squeeze(0).reshape(rows, 3, 9)
    assert (ints[:, 0].abs() + ints[:, 1].abs()).max() <= qdq.PAIR_BUDGET
    free_ints = free.round().squeeze(0).reshape(rows, 3, 9)
    assert (free_ints[:, 0].abs() + free_ints[:, 1].abs()).max() > qdq.PAIR_BUDGET   # the budget did bind
    assert ints.abs().max() == qdq.W_QMAX                                              # the 8-bit grid is kept
    np.testing.assert_array_equal(partners(6, 3).numpy()[:4], [2, 3, 0, 1])           # 3 channels × 2 taps
    assert partners(6, 3)[4] == -1                                                    # channel 2 has no partner


def test_paired_weights_cover_every_pairing_layer_and_spare_depthwise(tiny, tmp_path):
    src, fs = tiny
    art = quantize_int8(src, tmp_path / "paired.onnx", fs.calib, fs.heldout,
                        fast(paired_weights=True, fallback=False, use_cache=False))
    model = onnx.load(str(art.path))
    weights = _int8_weights(art.path)
    depthwise = {k for k, w in weights.items() if w.ndim == 4 and w.shape[1] == 1}
    assert len(depthwise) == 1 and len(weights) == 6      # stem, expand, depthwise, project, head, fc
    for k, w in weights.items():
        if k in depthwise:
            assert np.abs(w).max() == qdq.W_QMAX, k
        else:
            axis = 1 if w.ndim == 4 or any(n.op_type == "Gemm" for n in model.graph.node) else 0
            assert _pair_sums(w, axis).max() <= qdq.PAIR_BUDGET, k
    wide = quantize_int8(src, tmp_path / "wide.onnx", fs.calib, fs.heldout, fast(fallback=False, use_cache=False))
    wide_convs = [w for w in _int8_weights(wide.path).values() if w.ndim == 4 and w.shape[1] > 1]
    assert max(_pair_sums(w, 1).max() for w in wide_convs) > qdq.PAIR_BUDGET
    # per-channel grids finer than [-63, 63] where the pairs allow (paired_scales): 44.0 against 46.6 dB
    # here, 2026-12-07 (holding the pairs on the [-127, 127] grid alone read 22.7 dB)
    paired_db, wide_db = art.meta["gate"]["before"]["sqnr_db"], wide.meta["gate"]["before"]["sqnr_db"]
    assert paired_db >= wide_db - 4.0, (paired_db, wide_db)


def _conv(w: np.ndarray) -> onnx.ModelProto:
    out, cin, kh, kw = w.shape
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[kh // 2, kw // 2] * 2)],
                              "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out, 6, 6])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("shape", [(1, C, 1, 1), (4, 3, 3, 3)], ids=["1x1", "stem3x3"])
def test_openvino_computes_paired_weights_exactly(tmp_path, paired, shape):
    """Every input at 255, every weight on the channel's maximum: the paired graph computes on
    OpenVINO what ONNX Runtime's exact kernels compute, on any CPU; the full graph saturates on an
    x86 CPU without VNNI (half the exact value on an AVX2-only EPYC)."""
    ov = pytest.importorskip("openvino")
    model = _conv(np.ones(shape))
    targets = g.quant_targets(model)
    plan = qdq.QdqPlan(targets, {"x": 0.01}, unsigned={"x"},
                       weight_pairs=qdq.paired_weights(model, targets) if paired else {})
    path = tmp_path / "probe.onnx"
    onnx.save(qdq.build(model, plan), str(path))
    x = np.full((1, shape[1], 6, 6), 2.55, np.float32)    # quantizes to 255
    exact = g.session(path).run(None, {"x": x})[0][..., 3, 3]   # edgekit's sessions: exact kernels
    if not paired:
        np.testing.assert_allclose(exact, np.prod(shape[1:]) * 2.55, rtol=1e-4)
    y = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0][..., 3, 3]
    if paired or not int8_saturates():
        np.testing.assert_allclose(y, exact, rtol=1e-5)
    else:
        assert float(y.max()) < 0.9 * float(exact.max())


@pytest.mark.parametrize("target,option", [("openvino", "ov_int8_weights"), ("onnx", "ort_int8_weights")])
def test_int8_targets_pair_where_the_cpu_saturates_or_when_asked(target, option):
    """OpenVINO (oneDNN) and ONNX Runtime (its fast kernels) both add u8×s8 pairs in 16 bits on x86
    without VNNI: each target calibrates paired weights there, or when asked (for a fleet's devices)."""
    from edgekit.contracts import ExportRequest
    from edgekit.targets import get_target

    def opts(t, asked=None, device=None):
        req = ExportRequest(model="m", target=t, precision="int8", device=device,
                            options={} if asked is None else {option: asked})
        return get_target(t).calibration_options_for(req)
    assert opts(target) == opts(target, "auto") == ({"paired_weights": True} if int8_saturates() else {})
    assert opts(target, "paired") == opts(target, "paired", "GPU") == {"paired_weights": True}
    assert opts(target, "full") == opts(target, device="GPU") == opts("tensorrt") == {}
