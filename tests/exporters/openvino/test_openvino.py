"""OpenVINO target: FP32 / FP16 / INT8 IRs of every focus model against PyTorch, the
pretrained EfficientNet-Lite0 INT8 accuracy gate on real photos, device errors.

The deterministic-init focus models run at 1x3x128x128 to keep the file inside its time
budget (their INT8 gate is cosine only: untrained top-1 ties are noise); the accuracy
gate that users care about runs at full resolution on the pretrained EfficientNet-Lite0.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="the OpenVINO target needs openvino (pip install 'edgekit[openvino]')")
pytest.importorskip("nncf", reason="OpenVINO INT8 needs nncf (pip install 'edgekit[openvino]')")

import torch  # noqa: E402

from edgekit.feeds import photo_feeds  # noqa: E402
from calibration.quantize import Int8Options, quantize_int8  # noqa: E402
from edgekit.artifact import Artifact  # noqa: E402
from edgekit.compare import Comparison, tolerance_for  # noqa: E402
from edgekit.contracts import ExportRequest  # noqa: E402
from edgekit.errors import MissingDependencyError, UnavailableError, UsageError  # noqa: E402
from edgekit.models import build, get_spec  # noqa: E402
from edgekit.specs import InputSpec  # noqa: E402
from edgekit.torch_runner import TorchRunner  # noqa: E402
from exporters.onnx.exporter import export_onnx  # noqa: E402
from edgekit.compare import ROUNDING_FACTOR  # noqa: E402
from edgekit.torch_runner import fp32_rounding_error  # noqa: E402
from exporters.openvino.exporter import OpenVinoTarget  # noqa: E402
from exporters.openvino.runner import resolve_device  # noqa: E402
from exporters.onnx.simplify import simplify  # noqa: E402
from tests.conftest import exact_int8_cpu, make_context, torch_fp16_floor  # noqa: E402

pytestmark = pytest.mark.openvino

FOCUS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1_g3",
         "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_lite0", "efficientnet_v2_s")
SIZE = 96
# deterministic-init models: few calibration samples, a short latency guard, and no
# mixed-precision fallback (their INT8 accuracy is asserted as reported, see below)
FAST = {"nncf_subset_size": 8, "nncf_fast_bias_correction": True, "ov_guard_seconds": 0.2, "ov_max_fp_fraction": 0}
NNCF = {"int8_route": "nncf"}  # the default route is the shared Q/DQ ONNX (DEFAULT_INT8_ROUTE)


class Built:
    """One model's shared setup: module, simplified ONNX, real-photo feeds, torch outputs."""

    def __init__(self, name: str, root: Path, size: int | None = SIZE, pretrained: bool = False,
                 calib: int = 32, heldout: int = 16):
        self.spec = get_spec(name)
        self.model, self.weights = build(self.spec, pretrained=pretrained)
        side = size or self.spec.input_size
        self.inputs = (InputSpec(self.spec.input.name, (1, 3, side, side)),)
        root.mkdir(parents=True, exist_ok=True)
        onnx = export_onnx(self.model, self.inputs, root / f"{name}.onnx")
        self.source = simplify(onnx, root / f"{name}.sim.onnx")
        self.feeds = photo_feeds(self.spec.preprocess, self.inputs[0], heldout=heldout, calib=calib)
        self.root = root
        self.pretrained = pretrained
        self.arts: dict = {}
        self.warnings: dict[str, list[str]] = {}
        with TorchRunner(self.model, self.inputs) as ref:
            self.pairs = [(f, ref.infer(f)) for f in self.feeds.heldout]
        self.fp32_floor = fp32_rounding_error(self.model, self.inputs, self.feeds.heldout)

    def export(self, precision: str, **options) -> Artifact:
        key = (precision, tuple(sorted(options.items())))
        if key not in self.arts:
            self.arts[key] = self._export(precision, **options)
        return self.arts[key]

    def _export(self, precision: str, **options) -> Artifact:
        tol = {"cosine": options.pop("tolerance_cosine")} if "tolerance_cosine" in options else {}
        warnings: list[str] = []
        req = ExportRequest(model=self.spec.name, target="openvino", precision=precision, threads=2,
                            pretrained=self.pretrained, options={**FAST, **options}, tolerance=tol)
        target = OpenVinoTarget()
        target.check(req)
        # as the pipeline does: a target that does not quantize itself reads the shared Q/DQ stage
        source = self.qdq() if precision == "int8" and not target.handles_precision(req) else self.source
        ctx = make_context(req, spec=self.spec, model=self.model, inputs=self.inputs, source=source,
                           calib=self.feeds.calib, heldout=self.feeds.heldout, warn=warnings.append,
                           fp32_source=self.source)
        out = self.root / f"{precision}-{len(self.arts)}"
        art = target.export(ctx, out)
        self.warnings[str(out)] = warnings
        return art

    def qdq(self) -> Artifact:
        """The shared Q/DQ ONNX (calibration.quantize_int8), made once. What this file tests is
        OpenVINO's reading of that graph, so the untrained weights skip the slow parts of the
        calibration (GPTQ rounding took 69 s on efficientnet_v2_s; the float fallback cannot tell
        how trained weights would quantize); tests/calibration/test_calibration.py covers both."""
        if "qdq" not in self.arts:
            trained = self.weights.trained
            opts = Int8Options(gate_top1=trained, baselines=False, stats_feeds=32, weight_feeds=8,
                               sensitivity_feeds=4, gptq=trained, fallback=trained,
                               cache_dir=self.root / "calibration-cache")
            self.arts["qdq"] = quantize_int8(self.source, self.root / f"{self.spec.name}.int8.onnx",
                                             self.feeds.calib, self.feeds.heldout, opts, log=lambda m: None)
        return self.arts["qdq"]

    def parity(self, art: Artifact) -> Comparison:
        tol = tolerance_for(art.precision)
        if art.precision != "fp32" and not self.weights.trained:
            tol = replace(tol, top1=None)
        if art.precision == "fp32":
            tol = replace(tol, max_abs_floor=ROUNDING_FACTOR * self.fp32_floor)
        if art.precision == "fp16":
            cos, sq = torch_fp16_floor(self.model, [f for f, _ in self.pairs], compute=False,
                                       name=self.inputs[0].name)
            tol = replace(tol, cosine=min(tol.cosine, 1 - 2 * (1 - cos)), sqnr_db=min(tol.sqnr_db, sq - 3))
        comp = Comparison(art.stage, "openvino-CPU", art.precision, tol)
        with OpenVinoTarget().open(art, threads=2) as runner:
            for feed, ref in self.pairs:
                comp.add(ref, runner.infer(feed))
        return comp


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    cache: dict[str, Built] = {}
    root = tmp_path_factory.mktemp("openvino")

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name, root / name)
        return cache[name]

    return get


# EfficientNetV2-S costs 69 s of the file's 290 on 2 cores (its calibration most), MobileNetV3-Small
# (MobileNetV3-Large's blocks at other widths) 18 s; CI leaves both out (EDGEKIT_FAST=1), as the
# TensorRT dry run does, and plain `make test` runs them.
CI_LEAVES_OUT = {"efficientnet_v2_s", "mobilenet_v3_small"}


@pytest.mark.parametrize("precision", ("fp32", "fp16", "int8"))
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in CI_LEAVES_OUT else n
                                  for n in FOCUS])
def test_focus_model_parity(zoo, name, precision):
    b = zoo(name)
    art = b.export(precision)
    assert art.format == "openvino-ir" and art.precision == precision
    comp = b.parity(art)
    score = comp.primary()
    assert score.nonfinite == 0
    if precision == "int8" and not b.weights.trained:
        # Deterministic-init weights are not INT8-friendly on real photos (per-tensor INT8 cosine
        # 0.3-0.95, docs/openvino.md), so the gate's verdict is asserted, not a pass: the IR
        # must be what the exporter measured, and a failure must be flagged in the manifest.
        assert score.cosine > 0.0
    else:
        assert comp.passed, f"{name} {precision}: {comp.failures}"
    if precision == "fp32":
        assert score.max_abs < max(1e-4 * max(1, score.ref_peak / 10), ROUNDING_FACTOR * b.fp32_floor)
    if precision == "int8":
        meta = art.meta["int8"]
        assert meta["route"] == "qdq" and meta["int8_layer_fraction"] >= 0.8
        assert meta["qdq_source"]["sha256"] == b.qdq().sha256  # the integers TensorRT builds from
        # the exporter's own gate (INT8 IR vs FP32 IR) reports what parity against torch finds
        assert abs(meta["gate_after"]["cosine"] - score.cosine) < 2e-3
        # one gate policy (edgekit/verdict.py): untrained weights' INT8 accuracy is not assessed, so
        # the exporter's gate passes them; trained weights pass exactly when the cosine floor holds
        assert meta["gate_after"]["passed"] == (score.cosine >= 0.99 or not b.weights.trained)
        if not meta["gate_after"]["passed"]:
            assert any("accuracy gate" in w for w in b.warnings[str(art.path.parent)])
        guard = meta["latency_guard"]
        assert guard["fp32_p50_ms"] > 0 and guard["int8_p50_ms"] > 0


def test_nncf_route(zoo):
    """``--int8-route nncf``: NNCF's own INT8 IR, gated and reported the same way."""
    b = zoo("mobilenet_v3_large")
    art = b.export("int8", **NNCF)
    meta = art.meta["int8"]
    assert meta["route"] == "nncf" and meta["route_reason"] == "--int8-route nncf"
    assert meta["int8_layer_fraction"] == 1.0 and meta["restored"] == []  # FAST: no fallback
    score = b.parity(art).primary()
    assert score.nonfinite == 0 and abs(meta["gate_after"]["cosine"] - score.cosine) < 2e-3
    assert meta["latency_guard"]["int8_p50_ms"] > 0


def test_ir_loads_independently(zoo):
    """The IR is plain OpenVINO: Core().read_model + compile_model, no edgekit involved."""
    b = zoo("mobilenet_v3_large")
    art = b.export("int8")
    xml, binf = art.path / art.meta["xml"], art.path / art.meta["bin"]
    assert xml.is_file() and binf.is_file() and art.sha256
    core = ov.Core()
    model = core.read_model(str(xml))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed, ref = b.pairs[0]
    out = compiled(feed[b.inputs[0].name])[compiled.outputs[0]]
    with OpenVinoTarget().open(art) as runner:
        mine = runner.infer(feed)["output"]
    np.testing.assert_allclose(out, mine, rtol=0, atol=1e-5)
    types = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in types or any(str(op.get_element_type()) == "<Type: 'int8_t'>"
                                          for op in model.get_ops() if op.get_type_name() == "Constant")


@pytest.mark.slow
@exact_int8_cpu()
def test_pretrained_lite0_int8_full_resolution(tmp_path):
    """NNCF's INT8 IR (``--int8-route nncf``) of the pretrained EfficientNet-Lite0 on >= 200 held-out
    photo crops at full resolution, against FP32 torch (the default Q/DQ route's graph is gated in
    test_calibration_lite0.py: 96.0% / cosine 0.998 here). NNCF's defaults score 77.5% top-1 agreement / cosine
    0.952 here; edgekit's recipe 95.5% / 0.9936. The acceptance target of 98% is not reached by
    any INT8 we measured (nor by bf16 arithmetic, 94.5%): see docs/openvino.md."""
    b = Built("efficientnet_lite0", tmp_path, size=None, pretrained=True, calib=256, heldout=200)
    assert b.weights.trained and b.feeds.heldout.count >= 200
    # the fallback is off: it cannot lift top-1 here (16 of 61 layers in FP32: 95.0%), and the
    # default export returns this same fully-INT8 model when its capped fallback fails
    art = b.export("int8", nncf_subset_size=None, nncf_fast_bias_correction=False, ov_guard_seconds=0.5, **NNCF)
    meta = art.meta["int8"]
    assert meta["nncf"]["per_channel_activations"] is False and meta["int8_layer_fraction"] == 1.0
    score = b.parity(art).primary()
    assert score.rows >= 200
    assert score.top1 >= 0.95, f"top-1 agreement {score.top1:.1%}"
    assert score.cosine >= 0.99
    assert abs(meta["gate_after"]["top1"] - score.top1) <= 0.01


def test_restoring_every_layer_gives_back_fp32(zoo):
    """The mixed-precision fallback's building block: bypassing every quantizer and putting the
    FP32 biases back reproduces the FP32 model."""
    from exporters.openvino import nncf as nq

    b = zoo("mobilenet_v1")
    fp32 = ov.convert_model(str(b.source.path))
    feeds = list(b.feeds.calib)[:8]
    q = nq.quantize(fp32, feeds, ("input",), replace(nq.RECIPE, subset_size=8))
    units = nq.quantized_layers(q)
    assert len(units) >= 28
    back = nq.restore(q, fp32, list(units))
    ref = nq.outputs_of(fp32, feeds, b.inputs, ("output",), 2)
    out = nq.outputs_of(back, feeds, b.inputs, ("output",), 2)
    quant = nq.outputs_of(q, feeds, b.inputs, ("output",), 2)
    err = max(float(np.abs(r["output"] - o["output"]).max()) for r, o in zip(ref, out))
    qerr = max(float(np.abs(r["output"] - o["output"]).max()) for r, o in zip(ref, quant))
    assert err < 1e-4 < qerr


def test_fallback_restores_layers_until_the_gate_passes(zoo):
    """A gate the plain INT8 model fails but some restored layers pass: the ladder stops at the
    first passing rung, lists the restored layers, and the saved IR is what was gated."""
    b = zoo("mobilenet_v1")
    plain = b.export("int8", **NNCF)
    cos0 = plain.meta["int8"]["gate_after"]["cosine"]
    target = round(min(0.999, cos0 + (1 - cos0) * 0.3), 4)
    art = b.export("int8", ov_max_fp_fraction=1.0, **NNCF, **{"tolerance_cosine": target})
    meta = art.meta["int8"]
    assert not meta["gate_before"]["passed"] and meta["gate_after"]["passed"], meta.get("ladder")
    assert len(meta["restored"]) >= 1 and meta["int8_layers"] >= 1
    assert meta["ladder"][-1]["passed"] and meta["gate_after"]["cosine"] >= target
    assert abs(b.parity(art).primary().cosine - meta["gate_after"]["cosine"]) < 2e-3


def test_npu_error_names_available_devices():
    avail = ov.Core().available_devices
    if any(d.startswith("NPU") for d in avail):
        pytest.skip("this machine has an NPU")
    req = ExportRequest(model="mobilenet_v3", target="openvino", device="NPU")
    with pytest.raises(UsageError) as info:
        OpenVinoTarget().check(req)
    assert isinstance(info.value, UnavailableError) and info.value.exit_code == 2
    for d in avail:
        assert d in str(info.value)


def test_cli_npu_exit_2(capsys):
    from edgekit.cli.main import main

    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an NPU")
    code = main(["export", "mobilenet_v3", "--target", "openvino", "--device", "NPU"])
    err = capsys.readouterr().err
    assert code == 2
    assert "NPU" in err and "CPU" in err


def test_missing_device_names_available_ones():
    with pytest.raises(UsageError, match=r"'GPU'.*available devices: CPU"):
        resolve_device("gpu", ["CPU"])
    with pytest.raises(UsageError, match="available devices: none"):
        resolve_device("CPU", [])
    assert resolve_device("gpu", ["CPU", "GPU.0"]) == "GPU"
    assert resolve_device(None, ["CPU"]) == "CPU"
    assert resolve_device("AUTO", ["CPU"]) == "AUTO"
    with pytest.raises(UsageError, match="NPU"):
        resolve_device("AUTO:NPU,CPU", ["CPU"])


def test_options_are_checked():
    t = OpenVinoTarget()
    with pytest.raises(UsageError, match="--int8-route"):
        t.check(ExportRequest(model="mobilenet_v2", target="openvino", precision="fp32",
                              options={"int8_route": "nncf"}))
    with pytest.raises(UsageError, match="nncf-subset-size"):
        t.check(ExportRequest(model="mobilenet_v2", target="openvino", precision="int8",
                              options={"nncf_subset_size": 0}))
    assert t.handles_precision(ExportRequest(model="m", precision="int8", options={"int8_route": "nncf"}))
    assert not t.handles_precision(ExportRequest(model="m", precision="int8", options={"int8_route": "qdq"}))
    assert t.handles_precision(ExportRequest(model="m", precision="fp16"))
    assert not t.handles_precision(ExportRequest(model="m", precision="fp32"))


def test_missing_openvino_is_a_dependency_error(monkeypatch):
    """With the openvino module unimportable (the import system, not openvino, is patched),
    check() names the package and the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError) as info:
        OpenVinoTarget().check(ExportRequest(model="mobilenet_v2", target="openvino"))
    assert info.value.package == "openvino" and "edgekit[openvino]" in str(info.value)


def test_runner_threads_and_hint(zoo, tmp_path):
    b = zoo("mobilenet_v3_small")
    art = b.export("fp32")
    with OpenVinoTarget().open(art, threads=1, hint="throughput") as r:
        assert r.name == "openvino-CPU"
        assert r.config["INFERENCE_NUM_THREADS"] == 1 and r.config["PERFORMANCE_HINT"] == "THROUGHPUT"
        assert r.config["INFERENCE_PRECISION_HINT"] == "f32"
        out = r.infer(b.pairs[0][0])
    assert out["output"].dtype == np.float32 and out["output"].shape == (1, 1000)
    assert torch.is_tensor(torch.from_numpy(out["output"]))
