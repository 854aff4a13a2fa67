"""uint8 activations from a proven floor below 0 (calibration/bounds.py): h-swish and SiLU
outputs use all 256 codes instead of the symmetric grid's 128 and a few."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from calibration import bounds, methods
from calibration.graph import nonnegative_tensors
from calibration.quantize import Int8Options, quantize_int8
from edgekit.artifact import Artifact
from edgekit.compare import Tolerance
from edgekit.feeds import photo_feeds
from edgekit.specs import InputSpec, Preprocess
from exporters.onnx.exporter import export_onnx
from exporters.onnx.simplify import simplify

SIZE = 32
INPUT = InputSpec("input", (1, 3, SIZE, SIZE))


def test_self_gated_floors_are_the_functions_minima():
    silu = helper.make_node("Sigmoid", ["x"], ["s"])
    hsig = helper.make_node("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5)
    x = np.linspace(-20, 5, 2_000_001)
    true_silu = float((x / (1 + np.exp(-x))).min())          # -0.278464542...
    f = bounds.self_gated_floor(silu)
    assert true_silu - 1e-4 < f <= true_silu
    f = bounds.self_gated_floor(hsig)
    assert -0.375 - 1e-4 < f <= -0.375


def test_lower_bounds_are_proved_from_the_graph_and_extend_the_nonnegative_set():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    consts = [numpy_helper.from_array(np.asarray(v, np.float32), n) for v, n in ((-1.0, "lo"), (6.0, "hi"))]
    nodes = [
        helper.make_node("HardSwish", ["x"], ["hswish"]),
        helper.make_node("Sigmoid", ["x"], ["sig"]),
        helper.make_node("Mul", ["x", "sig"], ["silu"]),                        # x · sigmoid(x)
        helper.make_node("HardSigmoid", ["x"], ["hsig"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["hsig", "x"], ["hswish2"]),                    # h-swish written out
        helper.make_node("GlobalAveragePool", ["hswish"], ["pooled"]),
        helper.make_node("HardSigmoid", ["pooled"], ["gate"]),
        helper.make_node("Mul", ["hswish", "gate"], ["se"]),                    # squeeze-excite product
        helper.make_node("Relu", ["x"], ["relu"]),
        helper.make_node("Concat", ["relu", "silu"], ["cat"], axis=1),
        helper.make_node("Clip", ["x", "lo", "hi"], ["hardtanh"]),
        helper.make_node("Mul", ["x", "gate"], ["gated_x"]),                   # x has no floor: none
        helper.make_node("Add", ["hswish", "silu"], ["sum"]),                  # Add is not propagated
        helper.make_node("Identity", ["sum"], ["y"]),
    ]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], consts))
    b = bounds.lower_bounds(m)
    assert {t: round(v, 3) for t, v in b.items() if v < 0} == {
        "hswish": -0.375, "silu": -0.278, "hswish2": -0.375, "pooled": -0.375, "se": -0.375, "cat": -0.278,
        "hardtanh": -1.0}
    assert {t for t, v in b.items() if v >= 0} == nonnegative_tensors(m)
    assert "gated_x" not in b and "sum" not in b and "x" not in b


class HswishNet(nn.Module):
    """MobileNetV3's pattern: conv → h-swish → depthwise → h-swish → project, BatchNorm
    statistics from photo crops (so the h-swish inputs straddle its negative dip)."""

    def __init__(self, feeds):
        super().__init__()
        torch.manual_seed(5)
        act = nn.Hardswish
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), act(),
            nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), act(),
            nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.BatchNorm2d(48), act(),
            nn.Conv2d(48, 24, 1), nn.BatchNorm2d(24),
            nn.Conv2d(24, 64, 1), nn.BatchNorm2d(64), act())
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.train()
            self(torch.from_numpy(np.concatenate([f["input"] for f in feeds])))
            self.eval()

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


@pytest.fixture(scope="module")
def hswish(tmp_path_factory):
    fs = photo_feeds(Preprocess(resize=36, crop=SIZE), INPUT, heldout=24, calib=32)
    d = tmp_path_factory.mktemp("hswish")
    src = simplify(export_onnx(HswishNet(list(fs.calib)), (INPUT,), d / "net.onnx"), d / "net.sim.onnx")
    return src, fs.calib, fs.heldout, d


def _sqnr(src, path, feeds) -> float:
    import onnxruntime as ort

    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src.path, path))
    ref = np.concatenate([a.run(None, f)[0] for f in feeds])
    out = np.concatenate([b.run(None, f)[0] for f in feeds])
    return float(10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum()))


def test_floored_activations_take_all_256_codes_and_lower_the_error(hswish):
    src, calib, held, d = hswish
    arts = {}
    for floors in (False, True):
        opts = Int8Options(tolerance=Tolerance(cosine=0.9), gate_top1=False, fallback=False, use_cache=False,
                           baselines=False, floors=floors)
        arts[floors] = quantize_int8(src, d / f"floors{int(floors)}.onnx", calib, held, opts, log=lambda s: None)
    floored = arts[True].meta["activation_floors"]
    ranges_ = arts[True].meta["activation_ranges"]
    assert not arts[False].meta["activation_floors"]
    # h-swish outputs with a range wider than the floor keep it; where the threshold is below
    # |floor| the symmetric grid is finer, and the range choice keeps that one ("…, signed")
    assert floored and all(ranges_[t] > 0.375 for t in floored), (floored, ranges_)
    chosen = arts[True].meta["range_selection"]["per_tensor"]
    assert all(chosen[t].endswith(", signed") == (t not in floored) for t in chosen if t.startswith("hardswish"))
    m = onnx.load(str(arts[True].path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for q in (n for n in m.graph.node if n.op_type == "QuantizeLinear"):
        t, scale, zero = q.input[0], float(inits[q.input[1]]), inits[q.input[2]]
        if t in floored:
            assert zero.dtype == np.uint8 and int(zero) == floored[t]["zero_point"] > 0
            assert -int(zero) * scale <= floored[t]["floor"] < (1 - int(zero)) * scale  # the floor is on the grid
    # the whole network is never worse than on the symmetric grids (this net: 53 dB either way)
    assert _sqnr(src, arts[True].path, held) > _sqnr(src, arts[False].path, held) - 0.3


def test_a_floored_grid_lowers_the_error_at_the_consumer(hswish):
    """At the same threshold ``T`` the floor's grid has the step ``(T + 0.375) / 255`` instead
    of ``T / 127``: the consumer's output error falls by the square of that ratio."""
    from calibration import graph as g, ranges

    src, calib, held, _ = hswish
    model = g.load(src.path)
    targets = g.quant_targets(model)
    ops = ranges.consumers(model, targets)
    t = "hardswish_1"   # the expansion's h-swish, read by the depthwise convolution
    x = torch.from_numpy(ranges.activations(model, [t], held)[t])
    assert float(x.min()) < -0.1   # it does go negative
    top = float(x.max())
    with torch.no_grad():
        sym = ranges.output_error(ops[t], x, top)
        flo = ranges.output_error(ops[t], x, top, unsigned=True, floor=bounds.HARDSWISH_FLOOR)
    # rounding noise power goes with the step squared: the gain is 20·log10 of the step ratio
    expected = 20 * np.log10((top / 127) / ((top - bounds.HARDSWISH_FLOOR) / 255))
    assert expected > 3 and 10 * np.log10(sym / flo) > expected - 0.5, (sym, flo, expected)


def test_the_grid_fake_quant_matches_onnx_runtime_on_a_floored_tensor():
    """methods.fake_quant (what calibration fits the weights and ranges to) rounds like ONNX
    Runtime's QuantizeLinear/DequantizeLinear with the zero point of the floor."""
    import onnxruntime as ort

    floor, top = -0.375, 5.0
    scale = methods.scale_for(top, True, floor)
    zero = methods.zero_point(scale, floor)
    x = np.linspace(-0.5, 6.0, 10_001, dtype=np.float32)
    init = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"), numpy_helper.from_array(np.asarray(zero, np.uint8), "z")]
    m = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])], init), opset_imports=[helper.make_opsetid("", 17)])
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = methods.fake_quant(torch.from_numpy(x), scale, True, zero).numpy()
    np.testing.assert_allclose(ours, y, atol=1e-6)
    assert y.min() <= floor and y.min() > floor - scale          # the floor is covered by one code
    assert abs(y[np.argmin(np.abs(x))]) == 0.0                   # zero stays exact (zero padding)
