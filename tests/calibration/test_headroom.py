"""The classifier input's headroom (calibration/headroom.py): found from the graph, widened to a
tail bound of its per-crop maxima where the graph does not bound it (a ReLU6 before the pooling
does), and taken into the calibrated graph."""
from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from calibration import graph as g
from calibration import headroom
from calibration.quantize import Int8Options, quantize_int8
from edgekit.artifact import Artifact
from edgekit.feeds import photo_feeds

from test_quant_methods import INPUT, PRE, Separable, _onnx, feeds  # noqa: F401  (feeds: a fixture)


@pytest.fixture(scope="module")
def nets(feeds, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("headroom")
    return {act: _onnx(Separable(act, feeds[0]), d, act.__name__) for act in (nn.ReLU, nn.ReLU6)}


def test_the_classifier_input_is_the_tensor_the_last_layer_reads(nets):
    model = nets[nn.ReLU]
    targets = g.quant_targets(model)
    found = headroom.classifier_inputs(model, targets)
    assert found == [next(t.activation for t in targets if t.op == "Gemm")]
    assert len(targets) == 6 and len(found) == 1   # five convolutions before it are not widened


def test_a_relu6_before_the_pooling_caps_it_a_relu_does_not(nets):
    for act, cap in ((nn.ReLU6, 6.0), (nn.ReLU, None)):
        model = nets[act]
        (t,) = headroom.classifier_inputs(model, g.quant_targets(model))
        assert headroom.proven_max(model, t) == cap


def test_the_tail_bound_covers_what_a_log_normal_sample_holds_back():
    rng = np.random.default_rng(0)
    sample = np.exp(rng.normal(1.5, 0.2, 64))
    unseen = np.exp(rng.normal(1.5, 0.2, 20000))
    bound = headroom.tail_bound(sample)
    assert sample.max() < bound
    assert (unseen > sample.max()).mean() > 0.005     # the sample maximum clips other photos
    assert (unseen > bound).mean() < 0.001             # the bound almost never does
    assert headroom.tail_bound(sample[:10]) is None     # too few crops to estimate a spread


def test_widen_raises_only_the_classifier_input_and_records_it(nets, feeds):  # noqa: F811
    calib, _ = feeds
    model = nets[nn.ReLU]
    targets = g.quant_targets(model)
    (t,) = headroom.classifier_inputs(model, targets)
    picked = {x.activation: 1.0 for x in targets}
    picked[t] = 1e-3                                    # far below anything the crops produce
    done = headroom.widen(model, targets, picked, calib)
    assert set(done) == {t} and picked[t] == pytest.approx(done[t]["threshold"], abs=1e-4) and picked[t] > 0.1
    assert all(v == 1.0 for k, v in picked.items() if k != t)
    assert done[t]["crops"] == len(calib)
    relu6 = nets[nn.ReLU6]                              # bounded by the graph: left as calibrated
    before = {x.activation: 1e-3 for x in g.quant_targets(relu6)}
    kept = dict(before)
    assert headroom.widen(relu6, g.quant_targets(relu6), kept, calib) == {} and kept == before


def test_the_calibrated_graph_carries_the_headroom(nets, tmp_path):
    fs = photo_feeds(PRE, INPUT, heldout=12, calib=16)
    path = tmp_path / "relu.sim.onnx"
    g.onnx_mod().save(nets[nn.ReLU], str(path))
    src = Artifact(path=path, stage="simplified", format="onnx", precision="fp32", target="onnx", inputs=(INPUT,))
    art = quantize_int8(src, tmp_path / "relu.int8.onnx", fs.calib, fs.heldout,
                        Int8Options(gate_top1=False, fallback=False, use_cache=False))
    rec = art.meta["classifier_headroom"]
    (t,) = rec
    assert rec[t]["threshold"] == pytest.approx(max(rec[t]["calibrated"], rec[t]["tail_bound"]), abs=1e-4)
    q = g.load(art.path)
    inits = g.initializers(q)
    scale = next(float(g.to_array(inits[n.input[1]])) for n in q.graph.node
                 if n.op_type == "QuantizeLinear" and n.input[0] == t)
    assert min(abs(scale * levels / rec[t]["threshold"] - 1) for levels in (127, 255)) < 1e-4  # int8 or uint8 grid
