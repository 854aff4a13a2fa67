"""The ONNX Runtime form of the shared Q/DQ graph (exporters.onnx.ort_form, exporters.onnx.ort_activations):
what ONNX Runtime runs after its QDQ fusions, and that the numbers stay with the shared graph's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekit.feeds import photo_feeds
from calibration.gate import run_outputs, score
from exporters.onnx.ort_form import build_ort_int8
from calibration.quantize import quantize_int8
from edgekit.compare import Tolerance
from exporters.onnx.exporter import export_onnx
from exporters.onnx.simplify import simplify
from tests.calibration.test_calibration import INPUT, PRE, SIZE, TinyNet, fast


def _settled(net: nn.Module) -> nn.Module:
    """``net`` in eval mode, with BatchNorm statistics from one random batch (not the identity)."""
    with torch.no_grad():
        net.train()
        net(torch.randn(8, 3, SIZE, SIZE))
    return net.eval()


class SwishNet(nn.Module):
    """MobileNetV3's and EfficientNet's activations in miniature: hard-swish after a conv, a
    squeeze-excite block with a hard-sigmoid gate, and a SiLU (x · sigmoid(x)) block with a
    sigmoid-gated squeeze-excite."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.BatchNorm2d(32), nn.Hardswish())
        self.se1 = nn.Sequential(nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 32, 1), nn.Hardsigmoid())
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.SiLU())
        self.se2 = nn.Sequential(nn.Conv2d(32, 8, 1), nn.SiLU(), nn.Conv2d(8, 32, 1), nn.Sigmoid())
        self.head = nn.Sequential(nn.Conv2d(32, 48, 1), nn.BatchNorm2d(48), nn.ReLU())
        self.fc = nn.Linear(48, 10)
        _settled(self)

    def forward(self, x):
        x = self.dw(self.expand(self.stem(x)))
        x = x * self.se1(x.mean((2, 3), keepdim=True))
        x = self.mid(x)
        x = x * self.se2(x.mean((2, 3), keepdim=True))
        return self.fc(self.head(x).mean((2, 3)))


def _built(net: nn.Module, tmp_path: Path):
    raw = export_onnx(net, (INPUT,), tmp_path / "m.onnx")
    src = simplify(raw, tmp_path / "m.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=40, calib=48)
    art = quantize_int8(src, tmp_path / "q.onnx", fs.calib, fs.heldout, fast(cache_dir=tmp_path / "cache"),
                        log=lambda m: None)
    return src, fs, art


@pytest.fixture(scope="module")
def tiny_built(tmp_path_factory):
    return _built(TinyNet(), tmp_path_factory.mktemp("tiny"))


def _ort_op_counts(path: Path, tmp_path: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for n in onnx.load(so.optimized_model_filepath).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def test_ort_form_runs_every_quantized_conv_as_qlinearconv(tiny_built, tmp_path):
    src, fs, art = tiny_built
    summary = build_ort_int8(art.path, tmp_path / "ort.onnx", fs.calib)
    assert summary["quantized_convs"] == 5 and summary["range_feeds"] == 32
    # post-ReLU6 tensors become uint8 with zero point 0 (same range, twice the resolution)
    assert summary["activation_qdq_unsigned_zero0"] >= 3
    trt_form, ort_form = _ort_op_counts(art.path, tmp_path), _ort_op_counts(tmp_path / "ort.onnx", tmp_path)
    # the shared graph: ONNX Runtime fuses only the convolutions whose output meets a uint8 Q (the
    # ReLU6 outputs); the others it dequantizes and runs in float
    assert trt_form.get("QLinearConv", 0) < 5
    assert ort_form.get("QLinearConv", 0) == 5 and ort_form.get("Conv", 0) == 0, ort_form
    m = onnx.load(str(tmp_path / "ort.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:  # activations uint8, weights the shared graph's int8 per-channel
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].dtype == np.uint8, n.name
    # same calibration, so the numbers stay with the shared graph's
    ref = run_outputs(src.path, fs.heldout)
    shared = score(art.path, fs.heldout, ref, Tolerance(cosine=0.98))
    ort_c = score(tmp_path / "ort.onnx", fs.heldout, ref, Tolerance(cosine=0.98))
    c_shared, c_ort = shared.primary().cosine, ort_c.primary().cosine
    assert ort_c.passed and abs(c_ort - c_shared) < 0.01, (c_shared, c_ort)


def test_swish_and_squeeze_excite_run_on_integer_kernels(tmp_path):
    src, fs, art = _built(SwishNet(), tmp_path)
    summary = build_ort_int8(art.path, tmp_path / "ort.onnx", fs.calib)
    assert summary["integer_activations"] == {"hard_swish": 2, "hard_sigmoid": 1, "sigmoid": 3,
                                              "global_average_pool": 2}, summary
    ops = _ort_op_counts(tmp_path / "ort.onnx", tmp_path)
    # every activation between two quantized convolutions runs on uint8: no float pass is left
    # (the classifier's pooling, a ReduceMean that drops H and W, stays float before the Gemm)
    for float_op in ("HardSigmoid", "HardSwish", "Sigmoid", "Mul", "Conv"):
        assert ops.get(float_op, 0) == 0, (float_op, ops)
    assert ops.get("ReduceMean", 0) == 1, ops
    assert ops.get("QLinearSigmoid") == 3 and ops.get("QLinearGlobalAveragePool") == 2, ops
    # x · gate: 2 hard-swish, 2 SiLU, 2 squeeze-excite; x + 3: 2 hard-swish, 1 hard-sigmoid
    assert ops.get("QLinearMul", 0) == 6 and ops.get("QLinearAdd", 0) == 3, ops
    # the new rounding (the gates on 256 levels) stays small against the shared graph's
    ref = run_outputs(src.path, fs.heldout)
    shared = score(art.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    ort_c = score(tmp_path / "ort.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    # measured: shared Q/DQ 54.0 dB, ONNX Runtime form 56.5 dB
    assert ort_c.sqnr_db > 40 and ort_c.sqnr_db > shared.sqnr_db - 6, (shared.sqnr_db, ort_c.sqnr_db)


class SigmoidHead(nn.Module):
    """A dense multi-label head: the network's output is a sigmoid of a convolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.body(x)))


def test_a_sigmoid_that_is_the_output_keeps_float_resolution(tmp_path):
    src, fs, art = _built(SigmoidHead(), tmp_path)
    summary = build_ort_int8(art.path, tmp_path / "ort.onnx", fs.calib)
    assert summary["integer_activations"]["sigmoid"] == 0, summary
    ref = np.concatenate([list(o.values())[0] for o in run_outputs(src.path, fs.heldout)])
    got = np.concatenate([list(o.values())[0] for o in run_outputs(tmp_path / "ort.onnx", fs.heldout)])
    off_grid = np.abs(got * 255 - np.round(got * 255))
    assert (off_grid > 0.01).mean() > 0.5  # not snapped to 256 levels
    assert np.abs(got - ref).max() < 0.05


def _tiny_shufflenet() -> nn.Module:
    from edgekit.models.shufflenet_v2 import ShuffleNetV2, ShuffleNetV2Config

    torch.manual_seed(7)
    return _settled(ShuffleNetV2(ShuffleNetV2Config((2, 2, 1), (8, 16, 32, 64, 64)), num_classes=10))


def test_channel_shuffle_as_gather_is_exact(tmp_path):
    from calibration.graph import load, session
    from exporters.onnx.ort_movement import shuffle_to_gather

    raw = export_onnx(_tiny_shufflenet(), (INPUT,), tmp_path / "s.onnx")
    src = simplify(raw, tmp_path / "s.sim.onnx")
    m = load(src.path)
    assert shuffle_to_gather(m) == 5  # one per unit
    ops = [n.op_type for n in m.graph.node]
    assert "Transpose" not in ops and "Split" not in ops and ops.count("Gather") == 7  # 2 shuffles feed a split in two
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    want = session(src.path).run(None, {"input": x})[0]
    got = session(m).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)  # a permutation moves values; nothing is computed


def test_shufflenet_data_movement_runs_on_uint8(tmp_path):
    src, fs, art = _built(_tiny_shufflenet(), tmp_path)
    summary = build_ort_int8(art.path, tmp_path / "ort.onnx", fs.calib)
    assert summary["channel_shuffles_to_gather"] == 5 and summary["concat_qdq_added"] == 5, summary
    assert summary["conv_output_downstream_scale"] == 1 and summary["gemm_bias_int32"] == 1, summary
    so_path = tmp_path / "ort.optimized.onnx"
    ops = _ort_op_counts(tmp_path / "ort.onnx", tmp_path)
    # concat, shuffle, split and max-pool move uint8: no float copy of them is left
    for float_op in ("Concat", "Reshape", "Split", "MaxPool", "Conv"):
        assert ops.get(float_op, 0) == 0, (float_op, ops)
    assert ops.get("QLinearConcat") == 5 and ops.get("Gather") == 7, ops
    assert ops.get("QGemm") == 1 and ops.get("Gemm", 0) == 0, ops
    # dequantized once, for the classifier's float pooling; the Gemm runs as QGemm (int32 bias)
    assert ops.get("DequantizeLinear", 0) <= 2, ops
    optimized = onnx.load(str(so_path))
    assert not [n for n in optimized.graph.node if n.op_type == "Transpose" and len(n.attribute[0].ints) == 5]
    ref = run_outputs(src.path, fs.heldout)
    shared = score(art.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    ort_c = score(tmp_path / "ort.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    assert ort_c.sqnr_db > shared.sqnr_db - 3, (shared.sqnr_db, ort_c.sqnr_db)


def test_shufflenet_v1_shuffle_folds_into_its_neighbours(tmp_path, monkeypatch):
    """ShuffleNetV1's shuffle sits between the grouped 1×1 and the depthwise convolution: it
    moves into their weights (depthwise channels permuted, the next 1×1 read in that order,
    made dense), so the ONNX Runtime form runs no shuffle at all and the numbers do not move."""
    import exporters.onnx.ort_form as ort_form
    from calibration.graph import load, session
    from exporters.onnx.ort_movement import fold_shuffles
    from edgekit.models.shufflenet_v1 import ShuffleNetV1, ShuffleNetV1Config

    torch.manual_seed(11)
    net = ShuffleNetV1(ShuffleNetV1Config(groups=3, stage_repeats=(2, 1, 1), stage_channels=(12, 48, 96, 192)), 10)
    src, fs, art = _built(_settled(net), tmp_path)
    m = load(art.path)
    assert fold_shuffles(m) == 3  # 4 units; the first one's 1×1 is not grouped, so it has no shuffle
    assert not [n for n in m.graph.node if n.op_type in ("Transpose", "Reshape")]
    feeds = list(fs.heldout)[:8]
    want = [session(art.path, optimize=False).run(None, f)[0] for f in feeds]
    got = [session(m, optimize=False).run(None, f)[0] for f in feeds]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=0, atol=1e-5)
    summary = build_ort_int8(art.path, tmp_path / "ort.onnx", fs.calib)
    assert summary["channel_shuffles_folded"] == 3 and summary["channel_shuffles_to_gather"] == 0, summary
    ops = _ort_op_counts(tmp_path / "ort.onnx", tmp_path)
    assert ops.get("Gather", 0) == 0, ops
    # the residual adds and the stride-2 shortcut (average pool, concat) read the integers too;
    # the pools run as depthwise QLinearConv (ONNX Runtime's QLinearAveragePool is 3-5x slower)
    for float_op in ("Add", "AveragePool", "Concat", "MaxPool", "Conv"):
        assert ops.get(float_op, 0) == 0, (float_op, ops)
    assert ops.get("QLinearAdd", 0) >= 1 and ops.get("QLinearAveragePool", 0) == 0, ops
    assert summary["inputs_read_dequantized"] >= 1 and summary["pool_qdq_added"] >= 2, summary
    assert summary["average_pools_as_depthwise"] == 3, summary
    monkeypatch.setattr(ort_form, "pools_as_depthwise", lambda model, ix=None: 0)
    build_ort_int8(art.path, tmp_path / "pools.onnx", fs.calib)
    assert _ort_op_counts(tmp_path / "pools.onnx", tmp_path).get("QLinearAveragePool") == 3
    as_conv, as_pool = session(tmp_path / "ort.onnx"), session(tmp_path / "pools.onnx")
    for f in feeds:  # the same sum and divisor: the same integers
        np.testing.assert_array_equal(as_conv.run(None, f)[0], as_pool.run(None, f)[0])
    # The form quantizes what the shared graph keeps float (pools, concats, the shortcut), so it
    # is held to the signed-INT8 (TensorRT) form of the same calibration, whose activations have
    # no finer grid than the form's: 26.9 dB here; the default shared graph, with uint8
    # activations, reads 32.7 dB.
    ref = run_outputs(src.path, fs.heldout)
    signed = quantize_int8(src, tmp_path / "signed.onnx", fs.calib, fs.heldout,
                           fast(cache_dir=tmp_path / "cache", unsigned=False), log=lambda m: None)
    shared = score(signed.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    ort_c = score(tmp_path / "ort.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    assert ort_c.sqnr_db > shared.sqnr_db - 3, (shared.sqnr_db, ort_c.sqnr_db)


class OddChannelNet(nn.Module):
    """A MobileNetV3 block whose expanded width (40) is not a multiple of 16: the width at which
    ONNX Runtime's x86 QLinearConv leaves its fast depthwise kernel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(13)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 40, 1), nn.BatchNorm2d(40), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(40, 40, 5, 1, 2, groups=40), nn.BatchNorm2d(40), nn.Hardswish())
        self.se = nn.Sequential(nn.Conv2d(40, 8, 1), nn.ReLU(), nn.Conv2d(8, 40, 1), nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(40, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)
        _settled(self)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(self.expand(x))
        return self.fc((x + self.project(y * self.se(y.mean((2, 3), keepdim=True)))).mean((2, 3)))


def test_odd_widths_are_padded_and_the_gate_expanded_exactly(tmp_path, monkeypatch):
    """The depthwise width is padded to 48 (with the expansion, the squeeze-excite FCs and the
    projection around it), the RGB stem to 4 input channels, and the gate expanded to the
    full tensor before its multiply; ONNX Runtime's outputs do not move by one integer step
    and no transpose is left for it to run. The gate here (40×20×20) is below the size ONNX
    Runtime splits across threads, so it is expanded only once that line is moved to 0."""
    import exporters.onnx.ort_form as ort_form
    import exporters.onnx.ort_gates as ort_gates
    from calibration.graph import initializers, producers, session

    src, fs, art = _built(OddChannelNet(), tmp_path)
    assert build_ort_int8(art.path, tmp_path / "small.onnx", fs.calib)["gates_full_size"] == 0
    assert _ort_op_counts(tmp_path / "small.onnx", tmp_path).get("Expand") is None
    monkeypatch.setattr(ort_gates, "PARALLEL_MIN_ELEMENTS", 0)
    summary = build_ort_int8(art.path, tmp_path / "ort.onnx", fs.calib)
    assert summary["depthwise_channel_sets_padded"] == 1 and summary["input_channels_padded"] == 1, summary
    assert summary["gates_full_size"] == 1, summary
    m = onnx.load(str(tmp_path / "ort.onnx"))
    inits, prod = initializers(m), producers(m)

    def weight_shape(conv):
        return tuple(numpy_helper.to_array(inits[prod[conv.input[1]].input[0]]).shape)

    convs = [weight_shape(n) for n in m.graph.node if n.op_type == "Conv"]
    assert convs[:4] == [(16, 4, 3, 3), (48, 16, 1, 1), (48, 1, 5, 5), (8, 48, 1, 1)], convs
    assert convs[4:] == [(48, 8, 1, 1), (16, 48, 1, 1)], convs
    assert [n for n in m.graph.node if n.op_type == "Pad"], "the stem reads a padded image"
    ops = _ort_op_counts(tmp_path / "ort.onnx", tmp_path)

    for rewrite in ("pad_depthwise_channels", "pad_input_channels", "full_size_gates"):
        monkeypatch.setattr(ort_form, rewrite, lambda model, ix=None: 0)
    build_ort_int8(art.path, tmp_path / "plain.onnx", fs.calib)
    plain_ops = _ort_op_counts(tmp_path / "plain.onnx", tmp_path)
    assert ops.get("Expand") == 1 and ops.get("QLinearMul") == plain_ops.get("QLinearMul"), (ops, plain_ops)
    assert ops.get("Transpose") == plain_ops.get("Transpose"), (ops, plain_ops)
    new, plain = session(tmp_path / "ort.onnx"), session(tmp_path / "plain.onnx")
    for f in list(fs.heldout)[:8]:
        np.testing.assert_array_equal(new.run(None, f)[0], plain.run(None, f)[0])


def test_no_pair_in_front_of_a_layer_the_gate_kept_in_float(tiny_built, tmp_path):
    """A layer the INT8 gate kept in float reads its input exact; the form must not quantize that
    tensor again with a conv-output pair (on pretrained Lite0 one such pair cost 10 dB)."""
    from calibration.graph import consumers, load, producers

    src, fs, art = tiny_built
    m = load(art.path)
    prod, cons = producers(m), consumers(m)
    # make the last quantized conv a float layer: it reads the tensor its input Q quantizes
    convs = [n for n in m.graph.node if n.op_type == "Conv" and prod[n.input[0]].op_type == "DequantizeLinear"]
    # the depthwise conv: it reads the expand conv's ReLU6, where the form would put a pair
    def after_conv_activation(n):
        act = prod.get(prod[prod[n.input[0]].input[0]].input[0])
        return act is not None and act.op_type in ("Clip", "Relu") and getattr(prod.get(act.input[0]), "op_type", "") == "Conv"

    conv = next(n for n in convs if after_conv_activation(n))
    q = prod[prod[conv.input[0]].input[0]]
    assert q.op_type == "QuantizeLinear"
    exact = q.input[0]
    conv.input[0] = exact
    onnx.save(m, str(tmp_path / "shared.onnx"))
    summary = build_ort_int8(tmp_path / "shared.onnx", tmp_path / "ort.onnx", fs.calib)
    out = onnx.load(str(tmp_path / "ort.onnx"))
    readers = [n for n in out.graph.node if exact in n.input or f"{exact}_ort_dequantized" in n.input]
    assert any(n.op_type == "Conv" and n.input[0] == exact for n in readers), [n.op_type for n in readers]
    assert not any(n.output[0] == f"{exact}_ort_quantized" for n in out.graph.node)
    assert summary["quantized_convs"] == 4
    ref = run_outputs(src.path, fs.heldout)
    shared = score(tmp_path / "shared.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    form = score(tmp_path / "ort.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    assert form.sqnr_db > shared.sqnr_db - 1.0, (shared.sqnr_db, form.sqnr_db)


def test_the_second_form_leaves_linear_projections_unpaired(tiny_built, tmp_path):
    """linear_pairs=False: no uint8 pair on a conv output without an activation (TinyNet's
    projection into its residual add); the pairs after ReLU6 stay, and so does their fusion."""
    src, fs, art = tiny_built
    full = build_ort_int8(art.path, tmp_path / "full.onnx", fs.calib)
    lean = build_ort_int8(art.path, tmp_path / "lean.onnx", fs.calib, linear_pairs=False)
    assert lean["linear_pairs"] is False and full["linear_pairs"] is True
    assert lean["conv_output_qdq_added"] == full["conv_output_qdq_added"] - 1, (full, lean)
    ops = _ort_op_counts(tmp_path / "lean.onnx", tmp_path)
    assert ops.get("QLinearConv", 0) == 4 and ops.get("Conv", 0) + ops.get("FusedConv", 0) == 1, ops
    ref = run_outputs(src.path, fs.heldout)
    shared = score(art.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    form = score(tmp_path / "lean.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    assert form.sqnr_db > shared.sqnr_db - 1.0, (shared.sqnr_db, form.sqnr_db)


def test_a_layer_onnx_runtime_runs_in_float_reads_a_float_constant_weight(tiny_built, tmp_path):
    """The lean form's projection runs as a float Conv. Through a DequantizeLinear its weight is not
    a constant, and ONNX Runtime's NCHWc kernels skip it (a depthwise one then runs group by group:
    1.2 ms instead of 0.2 ms in pretrained Lite0); the form stores the same numbers as a float
    constant. The fused convolutions keep their INT8 weights."""
    from calibration.graph import initializers, producers

    src, fs, art = tiny_built
    full = build_ort_int8(art.path, tmp_path / "full.onnx", fs.calib)
    lean = build_ort_int8(art.path, tmp_path / "lean.onnx", fs.calib, linear_pairs=False)
    assert full["float_layers_constant_weights"] == 0 and lean["float_layers_constant_weights"] == 1
    shared = onnx.load(str(art.path))
    s_prod, s_inits = producers(shared), initializers(shared)
    m = onnx.load(str(tmp_path / "lean.onnx"))
    prod, inits = producers(m), initializers(m)
    floats = [n for n in m.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    assert len(floats) == 1
    (conv,) = floats
    w = numpy_helper.to_array(inits[conv.input[1]])
    assert w.dtype == np.float32 and prod[conv.input[0]].op_type == "DequantizeLinear"
    # the shared graph's dequantized weight of the same layer (same bias), computed by ONNX itself
    twin = next(n for n in shared.graph.node if n.op_type == "Conv" and n.input[2:] == conv.input[2:])
    dq = s_prod[twin.input[1]]
    q, sc = (numpy_helper.to_array(s_inits[i]) for i in dq.input[:2])
    np.testing.assert_array_equal(w, (q.astype(np.float32) * sc.reshape(-1, 1, 1, 1)).astype(np.float32))
    assert numpy_helper.to_array(s_inits[dq.input[2]]).any() == False  # noqa: E712 - symmetric weights
    ops = _ort_op_counts(tmp_path / "lean.onnx", tmp_path)
    assert ops.get("QLinearConv", 0) == 4, ops
    ref = run_outputs(src.path, fs.heldout)
    a = score(tmp_path / "lean.onnx", fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    b = score(art.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary()
    assert a.sqnr_db > b.sqnr_db - 1.0, (a.sqnr_db, b.sqnr_db)


def _shufflenet_v1() -> nn.Module:
    from edgekit.models.shufflenet_v1 import ShuffleNetV1, ShuffleNetV1Config

    torch.manual_seed(11)
    return _settled(ShuffleNetV1(ShuffleNetV1Config(groups=3, stage_repeats=(2, 1, 1),
                                                    stage_channels=(12, 48, 96, 192)), 10))


@pytest.mark.parametrize("make", [SwishNet, lambda: OddChannelNet(), _shufflenet_v1], ids=["swish", "odd", "shufflev1"])
def test_paired_weights_stay_paired_through_every_rewrite(make, tmp_path):
    """Calibrated with paired weights (the default on x86 CPUs without VNNI), every ONNX Runtime form
    holds the pair budget in the order ONNX Runtime's kernels read it, through the stem's padding,
    the depthwise padding and the shuffle folding: its fast kernels are exact, the artifact needs no
    session key, and the integers are those of the exact kernels."""
    import onnxruntime as ort

    from edgekit import ort_options

    net = make()
    raw = export_onnx(net, (INPUT,), tmp_path / "m.onnx")
    src = simplify(raw, tmp_path / "m.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=16, calib=48)
    art = quantize_int8(src, tmp_path / "q.onnx", fs.calib, fs.heldout,
                        fast(cache_dir=tmp_path / "cache", paired_weights=True), log=lambda m: None)
    for linear_pairs in (True, False):
        path = tmp_path / f"ort{int(linear_pairs)}.onnx"
        build_ort_int8(art.path, path, fs.calib, linear_pairs=linear_pairs)
        assert ort_options.kernel_exact(path), path.name
        outs = []
        for key in (False, True):
            so = ort.SessionOptions()
            if key:
                so.add_session_config_entry("session.x64quantprecision", "1")
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            outs.append(np.concatenate([s.run(None, f)[0] for f in list(fs.heldout)[:8]]))
        np.testing.assert_array_equal(outs[0], outs[1])
