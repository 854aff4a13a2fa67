"""The INT8 methods of issue 19 on tiny trained-like networks: cross-layer equalization keeps
the float function and evens out the channel ranges, bias correction removes the mean output
error, per-tensor range selection beats min/max at the output, squeeze-excite gates keep a
fixed [0, 1] grid."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from calibration import equalize as eq
from calibration import graph as g
from calibration import methods, qdq, ranges
from edgekit.feeds import photo_feeds, take
from calibration.stats import collect
from calibration.weights import calibrate_weights
from edgekit.specs import InputSpec, Preprocess
from exporters.onnx.exporter import export_onnx
from exporters.onnx.simplify import simplify

SIZE = 32
INPUT = InputSpec("input", (1, 3, SIZE, SIZE))
PRE = Preprocess(resize=36, crop=SIZE)


class Separable(nn.Module):
    """stem → expand → depthwise → project → head: MobileNetV2's block, with BatchNorm
    statistics from real photo crops and depthwise channels of very unequal scale (what
    batch-norm folding does to trained depthwise layers)."""

    def __init__(self, act=nn.ReLU6, feeds=None):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), act())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), act())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.BatchNorm2d(48), act())
        self.project = nn.Sequential(nn.Conv2d(48, 24, 1), nn.BatchNorm2d(24))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1), nn.BatchNorm2d(64), act())
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.dw[0].weight.mul_(torch.exp(torch.randn(48, 1, 1, 1) * 1.2))
            self.train()
            self(torch.from_numpy(np.concatenate([f["input"] for f in feeds])))
            self.eval()
            self.dw[1].weight.mul_(torch.exp(torch.randn(48) * 0.8))  # unequal folded scales

    def forward(self, x):
        x = self.project(self.dw(self.expand(self.stem(x))))
        return self.fc(self.head(x).mean((2, 3)))


@pytest.fixture(scope="module")
def feeds():
    fs = photo_feeds(PRE, INPUT, heldout=12, calib=16)
    return list(fs.calib), list(fs.heldout)


@pytest.fixture(scope="module")
def nets(feeds, tmp_path_factory):
    """The Separable net with ReLU and with ReLU6, as simplified ONNX (BatchNorm folded)."""
    d = tmp_path_factory.mktemp("nets")
    return {act: _onnx(Separable(act, feeds[0]), d, act.__name__) for act in (nn.ReLU, nn.ReLU6)}


def _onnx(net, tmp_path, name):
    return g.load(simplify(export_onnx(net, (INPUT,), tmp_path / f"{name}.onnx"), tmp_path / f"{name}.sim.onnx").path)


def _run(model, feeds):
    sess = g.session(model)
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _dw_spread(model) -> float:
    """log10(max/min) of the depthwise conv's per-channel weight ranges."""
    inits = g.initializers(model)
    node = next(n for n in model.graph.node if n.op_type == "Conv" and g.attr(n, "group", 1) > 1)
    r = np.abs(g.to_array(inits[node.input[1]])).reshape(48, -1).max(1)
    return float(np.log10(r.max() / r.min()))


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_equalization_keeps_the_float_function_and_evens_channel_ranges(nets, feeds, act):
    calib, held = feeds
    model = nets[act]
    # ReLU6 channels move only on request (exact on data like the calibration photos, see equalize.py)
    out, rep = eq.equalize(model, calib, relu6=act is nn.ReLU6, absorb=True)
    assert rep.pairs == 4 and rep.scaled_channels > 0  # stem→expand→dw→project→head
    before, after = _run(model, held), _run(out, held)
    assert np.abs(before - after).max() <= 1e-4 * max(1.0, np.abs(before).max())
    assert _dw_spread(out) < _dw_spread(model) - 0.2, (_dw_spread(model), _dw_spread(out))
    assert rep.spread_after < rep.spread_before
    # the default (ReLU and linear pairs only) is exact for any input, photos or not
    noise = [{"input": np.random.default_rng(i).standard_normal(INPUT.shape).astype(np.float32) * 3}
             for i in range(4)]
    out_default, rep_default = eq.equalize(model, calib)
    assert rep_default.scaled_channels > 0
    ref = _run(model, noise)
    assert np.abs(ref - _run(out_default, noise)).max() <= 1e-4 * np.abs(ref).max()


def test_relu6_channels_that_reach_the_clip_are_not_scaled(nets, feeds):
    calib, _ = feeds
    model = nets[nn.ReLU6]
    pairs = eq.find_pairs(model)
    assert sum(p.clip == 6.0 for p in pairs) == 3  # stem→expand, expand→dw, dw→project; project→head is linear
    outs = [p_out(model, p.a) for p in pairs if p.clip is not None]
    ext = eq.channel_extrema(model, outs, calib)
    out, rep = eq.equalize(model, calib, relu6=True)
    after = eq.channel_extrema(out, outs, calib)
    pinned = 0
    for t, (lo, hi) in ext.items():
        reached = hi * eq.CLIP_MARGIN >= 6.0
        pinned += int(reached.sum())
        # a channel that reaches the clip keeps its values; a scaled one stays clear of the clip
        np.testing.assert_allclose(after[t][1][reached], hi[reached], rtol=1e-5, atol=1e-6)
        assert (after[t][1][~reached] * eq.CLIP_MARGIN <= 6.0 + 1e-4).all()
    assert pinned > 0 and rep.scaled_channels > 0
    # without calibration data no ReLU6 channel can be checked, so none moves
    free, _ = eq.equalize(model, None, relu6=True)
    np.testing.assert_array_equal(eq.channel_extrema(free, outs, calib)[outs[0]][1], ext[outs[0]][1])


def p_out(model, node_name):
    return next(n for n in model.graph.node if n.name == node_name).output[0]


def test_bias_correction_reduces_the_mean_output_error(nets, feeds):
    calib, held = feeds
    model = g.named_copy(nets[nn.ReLU6])
    targets = g.quant_targets(model)
    tensors = sorted({t.activation for t in targets})
    stats = collect(model, tensors, calib)
    scales = {t: methods.scale_for(methods.threshold(stats[t], "mse")) for t in tensors}
    ref = _run(model, held)
    errs = {}
    for bc in (False, True):
        plan = qdq.QdqPlan(targets, dict(scales))
        calibrate_weights(model, plan, calib, max_feeds=16, gptq=False, bias_correction=bc)
        diff = _run(qdq.build(model, plan), held) - ref
        errs[bc] = float(np.abs(diff.mean(0)).mean())   # the systematic (mean) part of the error
    assert errs[True] < 0.8 * errs[False], errs


def test_range_selection_beats_minmax_at_the_output(nets, feeds):
    """Chosen on the calibration feeds, checked on held-out ones: where the choice is not
    min/max, the consumers' output error is mostly lower than with min/max."""
    calib, held = feeds
    model = g.named_copy(nets[nn.ReLU6])
    targets = g.quant_targets(model)
    tensors = sorted({t.activation for t in targets})
    stats = collect(model, tensors, calib)
    picked, chosen = ranges.select(model, targets, stats, calib)
    assert set(picked) == set(tensors)
    moved = [t for t in tensors if chosen[t] != "minmax"]
    assert moved, chosen
    ops, acts = ranges.consumers(model, targets), ranges.activations(model, moved, held)
    with torch.no_grad():
        errs = [(ranges.output_error(ops[t], torch.from_numpy(acts[t]), picked[t]),
                 ranges.output_error(ops[t], torch.from_numpy(acts[t]), methods.threshold(stats[t], "minmax")))
                for t in moved]
    # most tensors gain on photos the choice never saw (measured: 4 of 5; the fifth, fitted on 16
    # crops, clipped values that the held-out photos reach)
    assert sum(e < m for e, m in errs) > len(errs) / 2, errs
    assert np.median([e / m for e, m in errs]) < 0.97, errs


def test_a_gate_read_by_a_conv_keeps_the_fixed_unit_grid():
    """A sigmoid gate (squeeze-excite, swish) quantized for a conv gets threshold 1, whatever
    the calibration photos showed."""
    helper = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Conv", ["s", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 4, 4])], [w]),
        opset_imports=[helper.make_opsetid("", 17)])
    targets = g.quant_targets(m)
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 4, 4, 4)).astype(np.float32) - 3} for i in range(4)]
    stats = collect(m, ["s"], feeds)
    assert stats["s"].absmax < 0.9  # calibration never saw a gate near 1 ...
    picked, chosen = ranges.select(m, targets, stats, take(feeds, 4))
    assert picked["s"] == 1.0 and chosen["s"] == "gate[0,1]"  # ... the grid still covers [0, 1]


def test_nonnegative_tensors_are_proved_from_the_graph_not_the_data():
    """uint8 activations only where no input can make the tensor negative (calibration/graph.py)."""
    from onnx import TensorProto, helper, numpy_helper

    from calibration.graph import nonnegative_tensors

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    lo0, lo_neg, hi = (numpy_helper.from_array(np.asarray(v, np.float32), n)
                       for v, n in ((0.0, "lo0"), (-1.0, "loneg"), (6.0, "hi")))
    nodes = [
        helper.make_node("Relu", ["x"], ["relu"]),
        helper.make_node("Clip", ["x", "lo0", "hi"], ["relu6"]),
        helper.make_node("Clip", ["x", "loneg", "hi"], ["hardtanh"]),      # can be negative
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2]),
        helper.make_node("GlobalAveragePool", ["relu6"], ["gap"]),
        helper.make_node("Concat", ["relu", "relu6"], ["cat"], axis=1),
        helper.make_node("Concat", ["relu", "hardtanh"], ["mixed"], axis=1),  # one input can be negative
        helper.make_node("Sigmoid", ["x"], ["gate"]),
        helper.make_node("Mul", ["relu6", "gate"], ["se"]),
        helper.make_node("Mul", ["x", "gate"], ["swish"]),                   # SiLU: not non-negative
        helper.make_node("Add", ["relu", "relu6"], ["sum"]),                 # Add is not propagated
        helper.make_node("Identity", ["sum"], ["y"]),
    ]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [lo0, lo_neg, hi]))
    assert nonnegative_tensors(m) == {"relu", "relu6", "pool", "gap", "cat", "gate", "se"}


def test_layers_over_the_second_moment_budget_round_to_nearest_with_bias_correction(monkeypatch, tmp_path):
    """VGG-16's output-aware rounding needed 23.5 GiB of d×d sums (fc6: d = 25,088) and was killed
    for memory. Layers beyond SECOND_MOMENT_BUDGET (smallest first) round to nearest and keep the
    bias correction, which needs only means."""
    from calibration import weights as cw
    from calibration.quantize import quantize_int8
    from edgekit.feeds import photo_feeds
    from exporters.onnx.exporter import export_onnx
    from exporters.onnx.simplify import simplify
    from tests.calibration.test_calibration import INPUT, PRE, TinyNet, fast

    src = simplify(export_onnx(TinyNet(), (INPUT,), tmp_path / "t.onnx"), tmp_path / "t.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=8, calib=16)
    seen = {}
    real = cw._with_second_moments
    monkeypatch.setattr(cw, "_with_second_moments",
                        lambda targets, nodes, inits: seen.setdefault("full", real(targets, nodes, inits, budget=200_000)))
    art = quantize_int8(src, tmp_path / "t.int8.onnx", fs.calib, fs.heldout, fast(fallback=False, use_cache=False),
                        log=lambda m: None)
    counts = art.meta["weight_rounding"]["counts"]
    assert 0 < len(seen["full"]) < 6 and counts["round-memory-budget"] == 6 - len(seen["full"]), (seen, counts)
    assert art.meta["weight_rounding"]["bias_corrected"] == 6   # every layer, budget or not


def test_gptq_rounds_each_row_on_its_own_so_candidates_can_share_a_pass():
    """calibration/weights.py rounds its two GPTQ candidates (the weights and the least-squares
    target) as one stack of rows: that is only right while a row's rounding never reads another
    row. Stacked and separate must agree exactly, for a dense layer and for depthwise groups."""
    from calibration.layerwise import gptq_rows

    gen = torch.Generator().manual_seed(0)
    for groups, rows, d in ((1, 24, 80), (16, 1, 9)):
        x = torch.randn(groups, d, 4 * d, generator=gen, dtype=torch.float64)
        h = x @ x.transpose(1, 2) / (4 * d)
        a, b = (torch.randn(groups, rows, d, generator=gen) for _ in range(2))
        s = torch.rand(groups, rows, generator=gen) * 0.02 + 0.01
        both = gptq_rows(torch.cat([a, b], dim=1), h, s.repeat(1, 2), 0.01)
        assert torch.equal(both, torch.cat([gptq_rows(a, h, s, 0.01), gptq_rows(b, h, s, 0.01)], dim=1))
        assert not torch.equal(both[:, :rows], torch.round(a / s.unsqueeze(-1)) * s.unsqueeze(-1))  # not plain rounding


def test_weight_calibration_reports_each_feed_and_each_rounded_layer(nets, feeds):
    """The two phases of the weight step report progress (the export prints it: a wide ResNet
    layer's rounding takes tens of seconds): feeds observed, then layers rounded, in order."""
    calib, _ = feeds
    model = g.named_copy(nets[nn.ReLU6])
    targets = g.quant_targets(model)
    tensors = sorted({t.activation for t in targets})
    stats = collect(model, tensors, calib)
    plan = qdq.QdqPlan(targets, {t: methods.scale_for(methods.threshold(stats[t], "mse")) for t in tensors})
    seen, rounded = [], []
    choices = calibrate_weights(model, plan, calib, max_feeds=8, progress=lambda i, n: seen.append((i, n)),
                                round_progress=lambda i, n: rounded.append((i, n)))
    assert seen == [(i, 8) for i in range(1, 9)]
    n = len(targets)
    # after each layer its count; inside a layer, GPTQ's column blocks repeat the count done so far
    assert rounded == sorted(rounded) and rounded[-1] == (n, n) and len(choices) == n
    assert [r for r in dict.fromkeys(rounded) if r[0] > 0] == [(i, n) for i in range(1, n + 1)]
    assert len(rounded) > n, "no progress from inside a layer's rounding"


def test_gptq_ticks_once_a_block_of_columns_and_rounds_the_same():
    """A 4608-input layer's rounding takes tens of seconds: ``tick`` (the export's progress line)
    is called after every 32-column block, and changes nothing in the result."""
    from calibration.layerwise import gptq_rows

    gen = torch.Generator().manual_seed(1)
    d, rows = 80, 6
    x = torch.randn(1, d, 4 * d, generator=gen, dtype=torch.float64)
    h = x @ x.transpose(1, 2) / (4 * d)
    w = torch.randn(1, rows, d, generator=gen)
    s = torch.rand(1, rows, generator=gen) * 0.02 + 0.01
    ticks = []
    assert torch.equal(gptq_rows(w, h, s, 0.01, tick=lambda: ticks.append(1)), gptq_rows(w, h, s, 0.01))
    assert len(ticks) == 3   # blocks of columns 0-31, 32-63, 64-79


def test_the_least_squares_target_solves_indefinite_sums_too():
    """Cholesky where the damped covariance is positive definite, the general solve where the
    centred float32 sums left it indefinite (the suite's ShuffleNet and squeeze-excite test models do)."""
    from calibration.weights import _ls_target

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 200, generator=gen, dtype=torch.float64)
    w = torch.randn(1, 5, 12, generator=gen, dtype=torch.float64)
    cov = x @ x.transpose(1, 2) / 200
    cross = cov + 0.01 * torch.randn(1, 12, 12, generator=gen, dtype=torch.float64)
    for c in (cov, cov - 2.0 * torch.eye(12, dtype=torch.float64)):   # definite, then indefinite
        d = c.shape[-1]
        reg = c + 0.01 * torch.diagonal(c, dim1=1, dim2=2).mean(dim=1)[:, None, None].clamp_min(1e-12) \
            * torch.eye(d, dtype=c.dtype)
        want = torch.linalg.solve(reg, (w @ cross).transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(_ls_target(w, c, cross, 0.01), want, rtol=1e-9, atol=1e-12)
    assert bool((torch.linalg.cholesky_ex(reg)[1] != 0).any())    # the second really was indefinite
