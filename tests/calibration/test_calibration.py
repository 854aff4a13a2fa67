"""calibration/: feeds, range methods, the Q/DQ form, the gate and its fallback, the cache,
localization, FP16. A small residual CNN at 1x3x40x40 on real photo crops keeps the file
fast; the full-resolution accuracy gate on pretrained EfficientNet-Lite0 is in
test_calibration_lite0.py."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from calibration import methods
from calibration.cache import CalibrationCache
from edgekit.feeds import (ImageFeeds, array_feeds, bundled_photos, crops, feeds_info,
                               find_images, photo_feeds, split_array_feeds, split_images, take)
from calibration.fp16 import convert_fp16
from calibration.gate import run_outputs, score
from calibration.localize import format_localization, localize
from calibration.quantize import Int8Options, quantize_int8
from calibration.stats import TensorStats, collect
from edgekit.compare import Tolerance
from edgekit.errors import CalibrationError
from edgekit.specs import InputSpec, Preprocess
from exporters.onnx.exporter import OrtRunner, export_onnx
from exporters.onnx.simplify import simplify

SIZE = 40
INPUT = InputSpec("input", (1, 3, SIZE, SIZE))
PRE = Preprocess(resize=46, crop=SIZE)


class TinyNet(nn.Module):
    """Stem, an inverted residual block (expand, depthwise, project, skip), head, classifier:
    the structure of the MobileNet family in miniature."""

    def __init__(self, softmax: bool = False):
        super().__init__()
        torch.manual_seed(7)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.BatchNorm2d(48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 64, 1), nn.BatchNorm2d(64), nn.ReLU6())
        self.fc = nn.Linear(64, 10)
        self.softmax = softmax
        with torch.no_grad():  # BatchNorm statistics from random inputs: realistic activation scales
            self.train()
            self(torch.randn(8, 3, SIZE, SIZE))
            self.eval()

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        y = self.fc(self.head(x).mean((2, 3)))
        return torch.softmax(y, -1) if self.softmax else y


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    raw = export_onnx(TinyNet(), (INPUT,), d / "tiny.onnx")
    src = simplify(raw, d / "tiny.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=40, calib=48)
    return src, fs


def fast(**kw) -> Int8Options:
    base = dict(gate_top1=False, tolerance=Tolerance(cosine=0.98), baselines=False, weight_feeds=8,
                sensitivity_feeds=4, stats_feeds=48)
    return Int8Options(**{**base, **kw})


# -- feeds --------------------------------------------------------------------------

def test_split_is_deterministic_and_disjoint():
    photos = bundled_photos()
    cal, held = split_images(photos)
    assert (cal, held) == split_images(list(reversed(photos)))
    assert not set(cal) & set(held) and len(cal) + len(held) == len(photos) and held
    fs = photo_feeds(PRE, INPUT, heldout=30, calib=30)
    assert not {s.path for s in fs.calib.samples} & {s.path for s in fs.heldout.samples}
    assert fs.heldout.count >= 30 and fs.bundled
    again = photo_feeds(PRE, INPUT, heldout=30, calib=30)
    assert np.array_equal(next(iter(fs.heldout))["input"], next(iter(again.heldout))["input"])
    assert fs.calib.fingerprint() == again.calib.fingerprint() != fs.heldout.fingerprint()


def test_a_folder_with_few_held_out_photos_gets_a_warning(tmp_path):
    """The fallback stops once its gate passes on the held-out crops, so a verdict on one or two
    photos is optimistic for others: the export says so (edgekit/int8_stage.py)."""
    from edgekit.feeds import MIN_HELDOUT_PHOTOS, thin_heldout

    photos = bundled_photos()
    assert thin_heldout(photo_feeds(PRE, INPUT, heldout=8, calib=8)) is None  # the bundled ones: their own warning
    few = tmp_path / "few"
    few.mkdir()
    for p in photos[:5]:
        shutil.copy(p, few / p.name)
    msg = thin_heldout(photo_feeds(PRE, INPUT, folder=few, heldout=8, calib=8))
    assert msg and "rests on 2 held-out photos" in msg and "a --calib folder of 9+ photos" in msg, msg
    many = tmp_path / "many"
    many.mkdir()
    for p in photos[:9]:
        shutil.copy(p, many / p.name)
    fs = photo_feeds(PRE, INPUT, folder=many, heldout=8, calib=8)
    assert len({s.path for s in fs.heldout.samples}) >= MIN_HELDOUT_PHOTOS and thin_heldout(fs) is None


def test_take_spreads_over_photos():
    fs = photo_feeds(PRE, INPUT, heldout=10, calib=70)
    picked = take(list(range(len(fs.calib.samples))), 7)
    photos = {fs.calib.samples[i].path for i in picked}
    assert len(picked) == 7 and len(photos) >= 5


def test_empty_or_imageless_folder_is_a_calibration_error(tmp_path):
    with pytest.raises(CalibrationError, match="no images"):
        find_images(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(CalibrationError, match="no images") as exc:
        photo_feeds(PRE, INPUT, folder=tmp_path)
    assert exc.value.exit_code == 2 and exc.value.hint
    with pytest.raises(CalibrationError, match="not found"):
        photo_feeds(PRE, INPUT, folder=tmp_path / "missing")
    with pytest.raises(CalibrationError, match="notes.txt is a file") as exc:   # "not found" was untrue
        photo_feeds(PRE, INPUT, folder=tmp_path / "notes.txt")
    assert ".npy/.npz" in exc.value.hint


def test_calib_array_file_is_split_by_rows(tmp_path):
    rows = np.random.default_rng(1).normal(size=(10, *INPUT.shape[1:])).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    fs = photo_feeds(PRE, INPUT, folder=tmp_path / "rows.npy")
    assert not fs.bundled and (fs.calib.count, fs.heldout.count) == (6, 4)
    seen = np.concatenate([f[INPUT.name] for f in [*fs.calib, *fs.heldout]])
    assert sorted(map(bytes, seen.reshape(10, -1))) == sorted(map(bytes, rows.reshape(10, -1)))  # each row once
    fs = photo_feeds(PRE, INPUT, folder=tmp_path / "rows.npy", heldout=2, calib=3)   # capped like crops
    assert (fs.calib.count, fs.heldout.count) == (3, 2) and "2 of them used" in fs.heldout.source


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    for p in bundled_photos()[:4]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    feeds = ImageFeeds(crops(find_images(tmp_path), 1), PRE, INPUT, "folder")
    with pytest.warns(UserWarning, match="broken.jpg"):
        batches = list(feeds)
    assert len(batches) == 4 and len(feeds.skipped) == 1
    info = feeds_info(feeds)
    assert info["skipped_count"] == 1 and info["samples"] == 4


def test_array_feeds_npy_npz_and_split(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", input=x, other=x[:2])
    for f in ("a.npy", "b.npz"):
        feeds = array_feeds(tmp_path / f, INPUT)
        assert len(feeds) == 10 and np.array_equal(next(iter(feeds))["input"], x[:1])
    cal, held = split_array_feeds(array_feeds(tmp_path / "a.npy", INPUT))
    assert cal.count + held.count == 10 and held.count == 4
    assert not {a.tobytes() for a in cal.array} & {a.tobytes() for a in held.array}
    np.save(tmp_path / "bad.npy", x[:, :, :8])
    with pytest.raises(CalibrationError, match="shape"):
        array_feeds(tmp_path / "bad.npy", INPUT)


# -- statistics and methods -----------------------------------------------------------

def test_histogram_growth_is_exact_and_methods_order():
    rng = np.random.default_rng(1)
    data = [rng.standard_normal(20000).astype(np.float32) * s for s in (0.5, 1.0, 4.0)]
    data[2][0] = 40.0  # one outlier
    src = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"]), onnx.helper.make_node("Identity", ["x"], ["z"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [20000])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [20000]),
         onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [20000])]),
        opset_imports=[onnx.helper.make_opsetid("", 18)])
    stats = collect(src, ["z", "y"], [{"x": d} for d in data])
    z = stats["z"]
    allv = np.concatenate(data)
    assert z.count == allv.size and z.absmax == pytest.approx(40.0)
    assert z.hist.sum() + z.zeros == allv.size
    assert stats["y"].zeros >= (allv <= 0).sum()  # ReLU zeros kept out of the histogram
    t = {m: methods.threshold(z, m, 99.9) for m in methods.METHODS}
    assert t["minmax"] == pytest.approx(40.0)
    for m in ("percentile", "entropy"):
        assert 1.0 < t[m] < 20.0, (m, t[m])  # the outlier is clipped, the bulk is kept
    assert 1.0 < t["mse"] < 40.0  # MSE weighs the outlier's clipping error against every rounding error
    assert np.mean(np.abs(allv) <= t["percentile"]) == pytest.approx(0.999, abs=0.002)
    restored = TensorStats.from_dict(z.to_dict())
    assert methods.threshold(restored, "entropy") == t["entropy"]


# -- INT8 ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", methods.METHODS)
def test_each_method_produces_a_runnable_int8_model(tiny, tmp_path, method):
    src, fs = tiny
    art = quantize_int8(src, tmp_path / "q.onnx", fs.calib, fs.heldout,
                        fast(method=method, gptq=method == "mse", cache_dir=tmp_path / "cache"), log=lambda m: None)
    assert art.stage == "qdq" and art.precision == "int8" and art.parent == src.sha256
    assert art.meta["method"] == method and art.meta["calibration"]["samples"] == 48
    after = art.meta["gate"]["after"]
    assert after["cosine"] > 0.98 and after["samples"] == 40, after
    with OrtRunner(art.path) as r:
        out = r.infer(next(iter(fs.heldout)))
    assert np.isfinite(next(iter(out.values()))).all()


@pytest.mark.parametrize("unsigned", [True, False], ids=["default", "tensorrt"])
def test_qdq_form_is_symmetric_int8_per_channel(tiny, tmp_path, unsigned):
    """Zero point 0 everywhere; an activation the graph proves non-negative (a ReLU output) is
    uint8 by default and signed int8 in TensorRT's form (``unsigned=False``); the input is int8."""
    src, fs = tiny
    art = quantize_int8(src, tmp_path / "q.onnx", fs.calib, fs.heldout,
                        fast(baselines=True, cache_dir=tmp_path / "cache", unsigned=unsigned), log=lambda m: None)
    m = onnx.load(str(art.path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    kinds = []
    for n in qdq:
        zp = inits[n.input[2]]
        if n.op_type == "QuantizeLinear":
            # ReLU6 outputs and the mean of the head's ReLU6 output are never negative; the input
            # and the residual sum can be
            p = prod.get(n.input[0])
            nonneg = p is not None and (p.op_type == "Clip" or p.op_type in ("ReduceMean", "GlobalAveragePool")
                                        and prod[p.input[0]].op_type == "Clip")
            assert zp.dtype == (np.uint8 if unsigned and nonneg else np.int8), n.name
            kinds.append(zp.dtype.name)
        assert zp.dtype in (np.int8, np.uint8) and not zp.any(), n.name
        assert (inits[n.input[1]] > 0).all()
    assert sorted(kinds) == (["int8"] * 2 + ["uint8"] * 4 if unsigned else ["int8"] * 6), kinds
    assert art.meta["unsigned_activations"] if unsigned else not art.meta["unsigned_activations"]
    weighted = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 6 and not art.meta["float_layers"]
    for n in weighted:
        act, w = prod[n.input[0]], prod[n.input[1]]
        assert act.op_type == "DequantizeLinear" and prod[act.input[0]].op_type == "QuantizeLinear"
        assert inits[act.input[1]].size == 1  # per-tensor activation
        assert w.op_type == "DequantizeLinear" and w.input[0] in inits  # pre-quantized INT8 weights
        q, scale = inits[w.input[0]], inits[w.input[1]]
        axis = next(a.i for a in w.attribute if a.name == "axis")
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
        assert axis == 0 and scale.shape == (q.shape[0],)  # per output channel (Gemm here has transB=1)
    add = next(n for n in m.graph.node if n.op_type == "Add")
    assert any(prod[i].op_type == "DequantizeLinear" for i in add.input)  # residual input quantized
    layers = art.meta["layers"]
    assert layers["convs"] == 5 and layers["int8_conv_fraction"] == 1.0
    base = art.meta["baselines"]
    assert set(base) == {"per_tensor_minmax", "per_channel_minmax"}
    assert base["per_tensor_minmax"]["samples"] == 40 and base["per_channel_minmax"]["cosine"] > 0.9


def test_failing_gate_keeps_layers_in_float_until_it_passes(tiny, tmp_path):
    src, fs = tiny
    cache = tmp_path / "cache"
    plain = quantize_int8(src, tmp_path / "a.onnx", fs.calib, fs.heldout, fast(fallback=False, cache_dir=cache),
                          log=lambda m: None)
    sqnr = plain.meta["gate"]["after"]["sqnr_db"]
    strict = Tolerance(cosine=0.98, sqnr_db=sqnr + 4.0)  # fails as is; reachable with some layers in float
    logs = []
    art = quantize_int8(src, tmp_path / "b.onnx", fs.calib, fs.heldout,
                        fast(tolerance=strict, max_float_fraction=0.6, cache_dir=cache), log=logs.append)
    gate = art.meta["gate"]
    assert not gate["before"]["passed"] and gate["passed"], gate
    passed_at = next(i for i, st in enumerate(gate["fallback"], 1) if st["passed"])
    assert art.meta["float_layers"] and len(art.meta["float_layers"]) <= len(gate["fallback"])
    assert len(gate["fallback"]) - passed_at <= 2  # at most two margin steps past the first pass
    assert gate["after"]["sqnr_db"] >= sqnr + 4.0
    assert art.meta["sensitivity"] and any("keeping" in line for line in logs)
    m = onnx.load(str(art.path))
    floats = {n.name for n in m.graph.node if n.name in art.meta["float_layers"]}
    prod = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.name in floats:
            assert n.input[1] in {t.name for t in m.graph.initializer}  # float weights, no DQ
            assert n.input[0] not in prod or prod[n.input[0]].op_type != "DequantizeLinear"
    # an impossible gate within the float budget: reported, not raised
    art2 = quantize_int8(src, tmp_path / "c.onnx", fs.calib, fs.heldout,
                         fast(tolerance=Tolerance(cosine=0.999999999), max_float_fraction=0.2, cache_dir=cache),
                         log=lambda m: None)
    assert art2.meta["gate"]["passed"] is False and len(art2.meta["float_layers"]) == 1


def test_a_gate_passed_by_a_hair_gets_up_to_two_layers_of_margin(tiny, tmp_path):
    """calibration/fallback.py: past a passed gate whose SQNR is less than SQNR_MARGIN_DB above its
    floor, up to MARGIN_STEPS more layers of the ranking go to float, and the passing step with the
    best SQNR, less MIN_GAIN_DB a layer, is delivered; a gate passed with room to spare, or not
    assessed, gets none."""
    from calibration import fallback

    src, fs = tiny
    cache = tmp_path / "cache"
    plain = quantize_int8(src, tmp_path / "a.onnx", fs.calib, fs.heldout, fast(fallback=False, cache_dir=cache),
                          log=lambda m: None)
    sqnr = plain.meta["gate"]["after"]["sqnr_db"]
    logs = []
    hair = Tolerance(cosine=0.98, sqnr_db=sqnr - 0.5)
    art = quantize_int8(src, tmp_path / "b.onnx", fs.calib, fs.heldout,
                        fast(tolerance=hair, max_float_fraction=0.6, lean=False, cache_dir=cache), log=logs.append)
    gate = art.meta["gate"]
    assert gate["before"]["passed"] and gate["passed"]
    steps = gate["fallback"]
    assert 1 <= len(steps) <= fallback.MARGIN_STEPS and all(st["margin"] for st in steps)
    assert [st["float"] for st in steps] == [r["node"] for r in art.meta["sensitivity"][:len(steps)]]
    # each layer past the first pass is charged MIN_GAIN_DB
    worth = [(gate["before"]["sqnr_db"], 0)] + [(st["sqnr_db"], i) for i, st in enumerate(steps, 1) if st["passed"]]
    best, layers = max(worth, key=lambda t: (t[0] - fallback.MIN_GAIN_DB * t[1], -t[1]))
    assert gate["after"]["sqnr_db"] == best >= sqnr and len(art.meta["float_layers"]) == layers
    margin = gate["margin"]
    assert margin["aim_sqnr_db"] == pytest.approx(sqnr - 0.5 + fallback.SQNR_MARGIN_DB, abs=0.01)
    assert margin["steps"] == len(steps) and margin["reached"] == (best >= margin["aim_sqnr_db"])
    assert margin["float_layers"] == layers
    assert any("aiming for" in line for line in logs)
    # with spares asked for, the first passing step (here: no float layer) is the last spare when the
    # margin kept layers in float (calibration.spares.before_margin)
    from calibration import spares

    again = quantize_int8(src, tmp_path / "b2.onnx", fs.calib, fs.heldout,
                          fast(tolerance=hair, max_float_fraction=0.6, lean=False, spare_steps=1, cache_dir=cache),
                          log=lambda m: None, spare_dir=tmp_path / "spares")
    listed = again.meta.get("spares") or []
    assert [bool(d.get("before_margin")) for d in listed][-1:] == ([True] if layers else [False] * bool(listed))
    if layers:
        last = spares.stages(again, tmp_path / "spares")[-1]
        assert last.meta["spare_step"]["before_margin"] and last.meta["float_layers"] == []
        assert last.meta["layers"]["int8"] == 6 and not any(st.get("margin") for st in last.meta["gate"]["fallback"])
    # room to spare: no float layer
    roomy = quantize_int8(src, tmp_path / "c.onnx", fs.calib, fs.heldout,
                          fast(tolerance=Tolerance(cosine=0.98, sqnr_db=sqnr - fallback.SQNR_MARGIN_DB - 0.5),
                               max_float_fraction=0.6,
                               cache_dir=cache), log=lambda m: None)
    assert roomy.meta["float_layers"] == [] and not roomy.meta["gate"]["fallback"]
    assert "margin" not in roomy.meta["gate"]
    # not assessed (untrained weights): no margin either
    untrained = Tolerance(cosine=0.98, sqnr_db=sqnr + 10, assessed=False, assessed_note="untrained")
    loose = quantize_int8(src, tmp_path / "d.onnx", fs.calib, fs.heldout,
                          fast(tolerance=untrained, max_float_fraction=0.6, cache_dir=cache), log=lambda m: None)
    assert loose.meta["float_layers"] == [] and "margin" not in loose.meta["gate"]


def test_spare_steps_continue_the_fallback_past_a_passed_gate(tiny, tmp_path):
    """calibration/spares.py: the next fallback steps, written beside a passed gate and restored
    from the cache, each one more layer of the ranking in float."""
    from calibration import spares

    src, fs = tiny
    opts = fast(max_float_fraction=0.6, spare_steps=2, cache_dir=tmp_path / "cache")  # 6 layers: 3 may be float
    logs = []
    art = quantize_int8(src, tmp_path / "a.onnx", fs.calib, fs.heldout, opts, log=logs.append,
                        spare_dir=tmp_path / "s1")
    assert art.meta["gate"]["passed"] and art.meta["float_layers"] == []
    sp = art.meta["spares"]
    assert [len(d["float_layers"]) for d in sp] == [1, 2] and sp[1]["float_added"] not in sp[0]["float_layers"]
    assert [d["float_added"] for d in sp] == [r["node"] for r in art.meta["sensitivity"][:2]]  # the ranking's order
    assert any("spare fallback steps" in line for line in logs)
    staged = spares.stages(art, tmp_path / "s1")
    assert art.meta["spares"] == [{"float_added": d["float_added"], "layer_sqnr_db": d["layer_sqnr_db"]} for d in sp]
    assert [s.meta["layers"]["int8"] for s in staged] == [5, 4]
    assert all(s.meta["gate"]["fallback"][-1]["spare"] for s in staged) and "spares" not in staged[0].meta
    assert [f["float"] for f in staged[1].meta["gate"]["fallback"]] == [d["float_added"] for d in sp]
    assert [s.meta["spare_step"]["step"] for s in staged] == [1, 2]
    ref = run_outputs(src.path, fs.heldout)
    for s in staged:
        m = onnx.load(str(s.path))
        node = next(n for n in m.graph.node if n.name == s.meta["spare_step"]["float_added"])
        assert node.input[1] in {t.name for t in m.graph.initializer}   # its float weights, no DQ
        assert score(s.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary().cosine > 0.98
    # a cache hit restores them; without a folder there are none
    again = quantize_int8(src, tmp_path / "b.onnx", fs.calib, fs.heldout, opts, log=lambda m: None,
                          spare_dir=tmp_path / "s2")
    assert again.meta["cache"]["hit"] and [p.path.read_bytes() for p in spares.stages(again, tmp_path / "s2")] == \
        [p.path.read_bytes() for p in staged]
    none = quantize_int8(src, tmp_path / "c.onnx", fs.calib, fs.heldout, fast(spare_steps=2, use_cache=False),
                         log=lambda m: None)
    assert "spares" not in none.meta


def test_alternate_calibration_flips_the_signedness_and_brings_its_own_spares(tiny, tmp_path):
    """calibration/spares.alternate: the same options with the other activation signedness, its
    Q/DQ graph and spare steps as stages of their own, each marked for the manifest."""
    from calibration import spares

    src, fs = tiny
    opts = fast(max_float_fraction=0.6, spare_steps=2, unsigned=False, cache_dir=tmp_path / "cache")
    first = quantize_int8(src, tmp_path / "a.onnx", fs.calib, fs.heldout, opts, log=lambda m: None)
    assert not first.meta["unsigned_activations"]
    logs = []
    alt = spares.alternate(src, opts, fs.calib, fs.heldout, tmp_path / "alt", logs.append)
    assert len(alt) == 3 and alt[0].meta["unsigned_activations"]          # uint8 where never negative
    assert [a.meta.get("spare_step", {}).get("step") for a in alt] == [None, 1, 2]
    assert all(a.meta["alternate_calibration"]["activations"] == "uint8 where never negative" for a in alt)
    assert all(a.path.parent == tmp_path / "alt" and a.path.is_file() for a in alt)
    assert "calibrating again with uint8" in logs[0]
    ref = run_outputs(src.path, fs.heldout)
    assert score(alt[0].path, fs.heldout, ref, Tolerance(cosine=0.98)).primary().cosine > 0.98
    assert opts.unsigned is False   # the caller's options are left alone


def test_add_inputs_quantizes_the_projection_output_its_residual_add_reads(tiny, tmp_path):
    """``Int8Options(add_inputs=True)`` (ExecuTorch's alternate calibration): the projection's output
    reaches the residual Add through a Q/DQ pair of its own, with a range the calibration chose,
    and torch_transfer reads it back as the layer's ``output_clip``."""
    from calibration.torch_transfer import read_qdq

    src, fs = tiny
    plain = quantize_int8(src, tmp_path / "p.onnx", fs.calib, fs.heldout, fast(use_cache=False), log=lambda m: None)
    art = quantize_int8(src, tmp_path / "a.onnx", fs.calib, fs.heldout, fast(add_inputs=True, use_cache=False),
                        log=lambda m: None)
    m = onnx.load(str(art.path))
    prod = {o: n for n in m.graph.node for o in n.output}
    add = next(n for n in m.graph.node if n.op_type == "Add")
    sources = [prod[i] for i in add.input]
    assert [n.op_type for n in sources] == ["DequantizeLinear"] * 2     # both inputs quantized
    conv_side = [n for n in sources if prod[prod[n.input[0]].input[0]].op_type == "Conv"]
    assert len(conv_side) == 1 and len(art.meta["add_inputs"]) == 1 and "add_inputs" not in plain.meta
    layers = read_qdq(art.path)
    assert layers["project.0"].output_clip > 0 and all(
        lw.output_clip is None for k, lw in layers.items() if k != "project.0")
    assert read_qdq(plain.path)["project.0"].output_clip is None
    ref = run_outputs(src.path, fs.heldout)
    assert score(art.path, fs.heldout, ref, Tolerance(cosine=0.98)).primary().cosine > 0.98


def test_cache_reuses_the_calibrated_model(tiny, tmp_path):
    src, fs = tiny
    opts = fast(cache_dir=tmp_path / "cache")
    first_log, second_log = [], []
    a = quantize_int8(src, tmp_path / "a.onnx", fs.calib, fs.heldout, opts, log=first_log.append)
    b = quantize_int8(src, tmp_path / "b.onnx", fs.calib, fs.heldout, opts, log=second_log.append)
    assert a.meta["cache"]["hit"] is False and b.meta["cache"]["hit"] is True
    assert any("reusing calibration cache" in line for line in second_log)
    assert a.sha256 == b.sha256 and a.meta["gate"] == b.meta["gate"]
    # other options, same data: the statistics are reused, the model is recalibrated
    third_log = []
    c = quantize_int8(src, tmp_path / "c.onnx", fs.calib, fs.heldout, fast(cache_dir=tmp_path / "cache",
                      method="percentile"), log=third_log.append)
    assert c.meta["cache"]["hit"] is False and any("reusing calibration statistics" in x for x in third_log)
    assert len(list((tmp_path / "cache" / "result").iterdir())) == 2
    assert CalibrationCache(tmp_path / "cache").lookup("no-such-key") is None


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    from calibration.cache import default_dir

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_dir() == tmp_path / "elsewhere"


def test_gate_scores_against_fp32(tiny, tmp_path):
    src, fs = tiny
    ref = run_outputs(src.path, fs.heldout)
    same = score(src.path, fs.heldout, ref, Tolerance(cosine=0.999999))
    assert same and same.primary().rows == 40 and same.primary().top1 == 1.0


def test_localization_names_the_diverging_node(tiny, tmp_path):
    src, fs = tiny
    art = quantize_int8(src, tmp_path / "q.onnx", fs.calib, fs.heldout, fast(cache_dir=tmp_path / "c"),
                        log=lambda m: None)
    res = localize(src.path, art.path, fs.heldout, max_feeds=3, threshold_db=60.0)
    assert res["matched"] >= 8 and res["feeds"] == 3
    names = {n.name for n in onnx.load(str(src.path)).graph.node}
    assert res["first_below"]["node"] in names and res["worst"]["node"] in names | {"(output)"}
    assert all(x["sqnr_db"] is None or x["sqnr_db"] > 5 for x in res["layers"])
    table = format_localization(res)
    assert "first diverging node: " + res["first_below"]["node"] in table and "worst node" in table
    same = localize(src.path, src.path, fs.heldout, max_feeds=2)
    assert same["first_below"] is None and "no tensor below" in format_localization(same)


# -- FP16 ------------------------------------------------------------------------------

def test_fp16_keeps_io_fp32_and_fragile_ops_fp32(tmp_path):
    raw = export_onnx(TinyNet(softmax=True), (INPUT,), tmp_path / "s.onnx")
    art = convert_fp16(raw, tmp_path / "s.fp16.onnx")
    assert (art.stage, art.precision, art.format, art.parent) == ("fp16", "fp16", "onnx", raw.sha256)
    m = onnx.load(str(art.path))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert art.meta["kept_fp32_nodes"] and art.meta["initializer_types"].get("FLOAT16")
    fs = photo_feeds(PRE, INPUT, heldout=20, calib=2)
    ref = run_outputs(raw.path, fs.heldout)
    c = score(art.path, fs.heldout, ref, Tolerance(cosine=0.999), stage="fp16", precision="fp16")
    assert c, c.failures
    res = localize(raw.path, art.path, fs.heldout, max_feeds=2, threshold_db=30.0)
    assert res["matched"] >= 5 and res["first_below"] is None  # FP16 stays above 30 dB everywhere


def test_statistics_are_reused_only_for_the_same_tensors(tiny, tmp_path):
    """A calibration observing more tensors (``add_inputs``: ExecuTorch's) makes ONNX Runtime fuse
    the statistics graph differently, and its figures differ in the last bits; reusing them for a
    calibration of fewer tensors made a result depend on which target was exported first. Each set
    of observed tensors has statistics of its own, and the same calibration reproduces itself
    whatever ran before it."""
    src, fs = tiny
    cache = tmp_path / "cache"
    fresh = quantize_int8(src, tmp_path / "f.onnx", fs.calib, fs.heldout, fast(use_cache=False), log=lambda m: None)
    wide_log, plain_log = [], []
    quantize_int8(src, tmp_path / "w.onnx", fs.calib, fs.heldout, fast(add_inputs=True, cache_dir=cache),
                  log=wide_log.append)
    plain = quantize_int8(src, tmp_path / "p.onnx", fs.calib, fs.heldout, fast(cache_dir=cache), log=plain_log.append)
    assert not any("reusing calibration statistics" in x for x in plain_log), plain_log
    assert len(list((cache / "stats").iterdir())) == 2
    assert plain.sha256 == fresh.sha256
