"""edgekit's calibration carried into the targets that quantize in PyTorch (calibration/torch_transfer.py):
the Core ML W8A8 package and the ExecuTorch INT8 program hold the Q/DQ ONNX's INT8 weights exactly
and leave its float layers in float. A small residual CNN keeps the file fast; the pretrained
EfficientNet-Lite0 figures are in docs/calibration.md and the slow tests of test_coreml.py /
test_executorch.py."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.feeds import photo_feeds
from calibration.quantize import quantize_int8
from calibration.torch_transfer import read_qdq, transfer
from edgekit.compare import Tolerance
from edgekit.contracts import ExportContext, ExportRequest
from tests.conftest import make_context
from edgekit.errors import CalibrationError
from edgekit.models.registry import get_spec
from exporters.onnx.exporter import export_onnx
from exporters.onnx.simplify import simplify
from tests.calibration.test_calibration import INPUT, PRE, TinyNet, fast


@pytest.fixture(scope="module")
def qdq(tmp_path_factory):
    """TinyNet's Q/DQ ONNX with one layer kept in float (an unreachable gate forces the fallback)."""
    d = tmp_path_factory.mktemp("transfer")
    src = simplify(export_onnx(TinyNet(), (INPUT,), d / "tiny.onnx"), d / "tiny.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=16, calib=32)
    art = quantize_int8(src, d / "tiny.int8.onnx", fs.calib, fs.heldout,
                        fast(tolerance=Tolerance(cosine=0.999999999), max_float_fraction=0.2, cache_dir=d / "cache"),
                        log=lambda m: None)
    return art, fs


def int8_layers(layers):
    return {k: v for k, v in layers.items() if v.quantized}


def test_read_qdq_names_layers_by_torch_module(qdq):
    art, _ = qdq
    layers = read_qdq(art.path)
    assert set(layers) == {"stem.0", "expand.0", "dw.0", "project.0", "head.0", "fc"}
    floats = [k for k, v in layers.items() if not v.quantized]
    assert len(floats) == len(art.meta["float_layers"]) == 1, (floats, art.meta["float_layers"])
    for name, lw in layers.items():
        assert (lw.input_clip is not None and lw.input_clip > 0) == lw.quantized, (name, lw.input_clip)
        if lw.quantized:  # the same pair as an int8 grid: zero point 0 (signed) or -128 (uint8, never negative)
            scale, zero = lw.input_grid
            assert (zero, round(lw.input_clip / scale)) in ((0, 127), (-128, 255)), (name, lw.input_grid, lw.input_clip)
        else:
            assert lw.input_grid is None, (name, lw.input_grid)
    # the calibration's sensitivity ranking (by ONNX node) named by torch module, worst first
    from exporters.executorch.ranges import sensitivity_order

    ranking = sorted(art.meta["sensitivity"], key=lambda r: r["sqnr_db"])
    by_node = {lw.node: k for k, lw in layers.items()}
    assert ranking and sensitivity_order(art, layers) == [by_node[r["node"]] for r in ranking if r["node"] in by_node]
    assert len(sensitivity_order(art, layers)) == len(ranking), (ranking, by_node)
    for name, lw in int8_layers(layers).items():
        assert lw.int8.dtype == np.int8 and np.abs(lw.int8).max() <= 127
        axes = (slice(None),) + (None,) * (lw.weight.ndim - 1)
        np.testing.assert_array_equal(np.rint(lw.weight / lw.scales[axes]), lw.int8.astype(np.float32))


def test_transfer_folds_batchnorm_and_keeps_the_function(qdq):
    art, fs = qdq
    model = TinyNet()
    moved = transfer(model, read_qdq(art.path), (INPUT,))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in moved.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.from_numpy(np.concatenate([f["input"] for f in list(fs.heldout)[:8]]))
    with torch.no_grad():
        a, b = model(x), moved(x)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    # INT8-rounded weights and corrected biases, float activations: close to, not equal to, FP32
    assert 0.99 < cos < 1.0, cos


class AttrNet(nn.Module):
    """Batch norms kept as attributes beside their convs, not in a Sequential: ResNet's
    ``conv1``/``bn1``, GoogLeNet's and Inception-v3's ``conv``/``bn``. One BatchNorm reads an
    addition, not a conv (pre-activation style): the ONNX keeps it, so the transfer must too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.post = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.train()
            self(torch.randn(8, *INPUT.shape[1:]))
            self.eval()

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.post(x + self.bn2(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


def test_transfer_finds_batchnorms_kept_beside_their_convs(tmp_path):
    """ResNet-style blocks name the batch norm beside the conv. Before, only a batch norm next
    in a Sequential was removed, so ResNet's and GoogLeNet's were applied on top of the folded
    weights: ExecuTorch INT8 of resnet18 read -10.9 dB against FP32, GoogLeNet's .pte did not load."""
    model = AttrNet()
    src = simplify(export_onnx(model, (INPUT,), tmp_path / "attr.onnx"), tmp_path / "attr.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=8, calib=32)
    art = quantize_int8(src, tmp_path / "attr.int8.onnx", fs.calib, fs.heldout, fast(fallback=False), log=lambda m: None)
    moved = transfer(model, read_qdq(art.path), (INPUT,))
    left = [n for n, m in moved.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert left == ["post"]
    x = torch.from_numpy(np.concatenate([f["input"] for f in list(fs.heldout)[:8]]))
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), moved(x).flatten(), dim=0).item()
    assert 0.99 < cos < 1.0, cos


def test_transfer_into_another_model_is_an_error(qdq):
    art, _ = qdq
    other = nn.Sequential()
    other.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(CalibrationError, match="does not match|lacks"):
        transfer(other, read_qdq(art.path), (INPUT,))


def _ctx(target: str, art, fs, **options) -> ExportContext:
    req = ExportRequest(model="tiny", target=target, precision="int8", threads=1, options=options)
    return make_context(req, spec=get_spec("mobilenet_v2"), model=TinyNet(), inputs=(INPUT,), source=art,
                        calib=fs.calib, heldout=fs.heldout, stem="tiny")


def _int8_arrays(values) -> list[np.ndarray]:
    return [np.asarray(v) for v in values if isinstance(v, np.ndarray) and v.dtype == np.int8 and v.ndim >= 2]


def _holds_exactly(found: list[np.ndarray], layers) -> list[str]:
    """The INT8 layers whose integers appear, bit for bit, among ``found``."""
    keys = {(a.shape, a.tobytes()) for a in found}
    return sorted(k for k, lw in int8_layers(layers).items() if (lw.int8.shape, lw.int8.tobytes()) in keys)


def test_executorch_program_holds_edgekit_int8_weights(qdq, tmp_path):
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed (pip install 'edgekit[mobile]')")
    from exporters.executorch import quant as eq

    art, fs = qdq
    layers = read_qdq(art.path)
    cal = eq.calibrate(transfer(TinyNet(), layers, (INPUT,)), (INPUT,), fs.calib, 32, True, layers)
    floats = [n for n, path in cal.weighted if not layers[path].quantized]
    module = cal.convert(floats)
    consts = [functools.reduce(getattr, n.target.split("."), module) for n in module.graph.nodes if n.op == "get_attr"]
    assert _holds_exactly(_int8_arrays([c.detach().numpy() for c in consts if isinstance(c, torch.Tensor)]),
                          layers) == sorted(int8_layers(layers))

    from exporters.executorch.exporter import ExecuTorchTarget

    out = ExecuTorchTarget().export(_ctx("executorch", art, fs), tmp_path)
    q = out.meta["quantization"]
    floats = [k for k, v in layers.items() if not v.quantized]
    # float where XNNPACK can run it in float, INT8 otherwise: all accounted for; producers a pad needs added
    got = set(q["float_layers"]) - set(q["float_layers_added"]) | set(q["float_layers_quantized"])
    assert q["weights"] == "edgekit calibration" and got >= set(floats), q
    # every INT8 layer's input takes edgekit's range (TinyNet: no tensor feeds two layers)
    assert q["activation_ranges"]["pinned_to_edgekit"] >= len(int8_layers(layers)), q
    assert out.meta["gate"]["cosine"] > 0.95, out.meta["gate"]


def test_coreml_package_holds_edgekit_int8_weights(qdq, tmp_path):
    pytest.importorskip("coremltools", reason="the Core ML target needs coremltools (pip install 'edgekit[coreml]')")
    from exporters.coreml.exporter import CoreMLTarget
    from exporters.coreml.mil import load_program

    art, fs = qdq
    layers = read_qdq(art.path)
    out = CoreMLTarget().export(_ctx("coreml", art, fs), tmp_path)
    q = out.meta["quantization"]
    assert q["weights"] == "edgekit calibration" and q["edgekit_weight_layers"] == q["edgekit_int8_layers"] == 5, q
    assert len(q["float_layers"]) == 1, q
    assert q["activation_ranges_pinned_to_edgekit"] >= len(int8_layers(layers)) - 1, q
    prog = load_program(out.path)
    # activations are quantized where the shared graph quantizes them (inputs of INT8 layers), no more
    counts = prog.op_counts()
    assert q["activation_quantizers_removed"] >= 1 and counts["quantize"] == len(int8_layers(layers)), (counts, q)
    values = [o.value for o in prog.ops] + [v for o in prog.ops for vs in o.inputs.values() for v in vs]
    assert _holds_exactly(_int8_arrays(values), layers) == sorted(int8_layers(layers))
    assert out.meta["program_parity"]["cosine"] > 0.999, out.meta["program_parity"]


def test_native_rounding_stays_available(qdq, tmp_path):
    """--et-weights pt2e / --coreml-weights coremltools: the pipeline skips the Q/DQ stage."""
    from exporters.coreml.exporter import CoreMLTarget
    from exporters.executorch.exporter import ExecuTorchTarget

    req = ExportRequest(model="tiny", target="executorch", precision="int8")
    assert not ExecuTorchTarget().handles_precision(req) and not CoreMLTarget().handles_precision(
        ExportRequest(model="tiny", target="coreml", precision="int8"))
    assert ExecuTorchTarget().handles_precision(ExportRequest(model="t", target="executorch", precision="int8",
                                                              options={"et_weights": "pt2e"}))
    assert CoreMLTarget().handles_precision(ExportRequest(model="t", target="coreml", precision="int8",
                                                          options={"coreml_weights": "coremltools"}))
    assert CoreMLTarget().handles_precision(ExportRequest(model="t", target="coreml", precision="int8",
                                                          options={"int8_mode": "w8"}))
    assert ExecuTorchTarget().handles_precision(ExportRequest(model="t", target="executorch", precision="fp32"))


def test_coreml_w8a8_follows_the_shared_graph_around_a_squeeze_excite(tmp_path):
    """coremltools shares one fake quant between an average pool's input and output. The feature
    map it also quantizes is float in the shared graph, so that use is dropped and the fake quant
    keeps the pooled vector's range; looked up by name, the shared module was missed and untrained
    MobileNetV3's package fell to 0.4 dB from the shared graph (12 dB after)."""
    pytest.importorskip("coremltools", reason="the Core ML target needs coremltools (pip install 'edgekit[coreml]')")
    import onnxruntime as ort

    from exporters.coreml.quant import quantize_w8a8
    from tests.exporters.executorch.test_executorch_ranges import SENet

    torch.manual_seed(0)
    model = SENet().eval()
    src = simplify(export_onnx(model, (INPUT,), tmp_path / "se.onnx"), tmp_path / "se.sim.onnx")
    fs = photo_feeds(PRE, INPUT, heldout=8, calib=16)
    art = quantize_int8(src, tmp_path / "se.int8.onnx", fs.calib, fs.heldout, fast(cache_dir=tmp_path / "cache"),
                        log=lambda m: None)
    layers = read_qdq(art.path)
    final, meta = quantize_w8a8(transfer(model, layers, (INPUT,)), (torch.zeros(INPUT.shape),), fs.calib, (INPUT,), 16, layers)
    assert meta["activation_quantizers_removed"] >= 1, meta
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    xs = [f["input"] for f in fs.heldout]
    want = np.concatenate([sess.run(None, {"input": x})[0] for x in xs])
    with torch.no_grad():
        got = np.concatenate([final(torch.from_numpy(x)).numpy() for x in xs])
    sqnr = 10 * np.log10((want ** 2).mean() / ((got - want) ** 2).mean())
    # measured 44.6 dB; 35.3 dB with the by-name lookup that missed the shared fake quant
    assert sqnr >= 40, sqnr
