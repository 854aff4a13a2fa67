"""edgekit's activation ranges and float layers carried into the PT2E (XNNPACK) program
(exporters/executorch/ranges.py): which float layers XNNPACK can run, and that a pinned range
is the range the program quantizes with. Pretrained Lite0/1/2 figures: docs/mobile.md."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters.executorch.ranges import float_closure, output_layers


class PadNet(nn.Module):
    """expand 1x1 → ReLU6 → asymmetric pad → depthwise 3x3 s2 → project 1x1 → head 1x1."""

    def __init__(self, share_expand: bool = False):
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8)
        self.project = nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(4, 4, 1)
        self.share_expand = share_expand

    def forward(self, x):
        e = F.hardtanh(self.expand(x), 0.0, 6.0)  # what nn.ReLU6 exports to
        y = self.project(self.dw(F.pad(e, (0, 1, 0, 1))))
        if self.share_expand:  # a second reader of the expand output: it cannot turn float for the pad alone
            y = y + F.avg_pool2d(e[:, :4], 2)
        return self.head(y)


def _graph(model):
    from exporters.executorch.quant import weighted_nodes

    gm = torch.export.export(model.eval(), (torch.zeros(1, 3, 16, 16),)).module()
    nodes = weighted_nodes(gm)
    return gm, nodes, {n.meta["nn_module_stack"] and list(n.meta["nn_module_stack"].values())[-1][0]: n.name
                       for n in nodes}


def test_a_float_layer_behind_a_pad_takes_its_producer_along():
    gm, nodes, name = _graph(PadNet())
    chosen, added, kept = float_closure(gm, [name["dw"]], nodes)
    assert chosen == [name["expand"], name["dw"]] and added == [name["expand"]] and kept == []


def test_a_layer_that_reads_a_quantized_tensor_directly_can_be_float():
    gm, nodes, name = _graph(PadNet())
    chosen, added, kept = float_closure(gm, [name["project"], name["head"]], nodes)
    assert chosen == [name["project"], name["head"]] and added == [] and kept == []


def test_a_pad_whose_producer_has_other_readers_stays_int8():
    gm, nodes, name = _graph(PadNet(share_expand=True))
    chosen, added, kept = float_closure(gm, [name["dw"]], nodes)
    assert chosen == [] and kept == [name["dw"]]


def test_a_float_layer_keeps_its_input_float_by_taking_its_producer_along():
    """XNNPACK quantizes every INT8 layer's output: the projection's input stays float only when
    the depthwise convolution that writes it is float too (the shared graph's float layer)."""
    gm, nodes, name = _graph(PadNet())
    chosen, added, kept = float_closure(gm, [name["project"]], nodes, float_inputs=True)
    # the depthwise conv reads a pad of the expand output: the expand comes along as well
    assert chosen == [name["expand"], name["dw"], name["project"]], chosen
    assert sorted(added) == sorted([name["dw"], name["expand"]]) and kept == []
    chosen, added, _ = float_closure(gm, [name["head"]], nodes, float_inputs=True)
    assert chosen == [name["project"], name["head"]] and added == [name["project"]]


def test_a_producer_with_other_readers_is_not_taken_along():
    gm, nodes, name = _graph(PadNet(share_expand=True))
    # the head reads y = project(...) + pool(expand): an add, not a weighted producer
    chosen, added, kept = float_closure(gm, [name["head"]], nodes, float_inputs=True)
    assert chosen == [name["head"]] and added == [] and kept == []


class Classifier(nn.Module):
    """conv → ReLU → global pool → flatten → linear: the logits come out of the linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1))


def test_the_layer_that_writes_the_logits_is_found_through_pool_and_flatten():
    gm, nodes, name = _graph(PadNet())
    assert output_layers(gm, nodes) == [name["head"]]
    from exporters.executorch.quant import weighted_nodes

    gm = torch.export.export(Classifier().eval(), (torch.zeros(1, 3, 8, 8),)).module()
    nodes = weighted_nodes(gm)
    assert [n.target for n in nodes if n.name in output_layers(gm, nodes)] == [torch.ops.aten.linear.default]


def test_the_program_hands_back_float_logits_from_int8_weights():
    """A quantized classifier would return logits on 256 levels over a histogram-chosen range that
    clips the winners (two classes tie at the top and the first index wins). The linear that
    writes the model's output runs as XNNPACK's dynamically quantized linear: INT8 weights, the
    input quantized per call, a float output. The program stays fully delegated and the weights
    stay 8-bit (the .pte is smaller than with that layer in float)."""
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed (pip install 'edgekit[mobile]')")
    from edgekit.specs import InputSpec
    from exporters.executorch import quant as eq
    from exporters.executorch.exporter import lower_to_pte

    torch.manual_seed(0)
    inp = InputSpec("input", (1, 3, 8, 8))
    feeds = [{"input": torch.randn(4, 3, 8, 8).numpy()} for _ in range(4)]
    model = Classifier().eval()
    model.fc = nn.Linear(8, 4000)  # a wide head, so its weights dominate the program's size
    cal = eq.calibrate(model, (inp,), feeds, 16, True)
    fc = [n for n, p in cal.weighted if p == "fc"]
    assert cal.dynamic_outputs == fc and cal.float_outputs == []
    module = cal.convert([])
    linear = next(n for n in module.graph.nodes if n.op == "call_function" and "linear" in str(n.target))
    assert not any("quantize_per_tensor" in str(u.target) for u in linear.users), list(linear.users)
    assert any("choose_qparams" in str(n.target) for n in module.graph.nodes)  # its input: quantized per call
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref, out = model(x), module(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())
    assert sqnr > 25, float(sqnr)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        dyn = lower_to_pte(module, (torch.zeros(1, 3, 8, 8),), Path(d) / "dyn.pte")
        size_dyn = (Path(d) / "dyn.pte").stat().st_size
        lower_to_pte(cal.convert(fc), (torch.zeros(1, 3, 8, 8),), Path(d) / "float.pte")
        size_float = (Path(d) / "float.pte").stat().st_size
    assert dyn["non_delegated_count"] == 0, dyn
    assert size_dyn < 0.5 * size_float, (size_dyn, size_float)  # 32,000 int8 weights instead of float


def test_the_program_quantizes_with_the_pinned_range():
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed (pip install 'edgekit[mobile]')")
    from edgekit.specs import InputSpec
    from exporters.executorch import quant as eq

    torch.manual_seed(0)
    inp = InputSpec("input", (1, 3, 16, 16))
    feeds = [{"input": torch.randn(4, 3, 16, 16).numpy()} for _ in range(4)]
    cal = eq.calibrate(PadNet().eval(), (inp,), feeds, 16, True)
    wide = cal.convert([])
    cal.ranges = {"dw": 0.01, "project": 0.01, "head": 0.01}
    narrow = cal.convert([])
    assert cal.pinned >= 3, cal.pinned

    def scales(module):
        return sorted(float(n.args[1]) for n in module.graph.nodes
                      if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
                      and "dequantize" not in str(n.target))

    # three observed tensors now span at most [-0.01, 0.01] (255 steps), the others keep their range
    tight = [s for s in scales(narrow) if s <= 0.02 / 255 * (1 + 1e-6)]
    assert len(tight) >= 3 and len([s for s in scales(wide) if s <= 0.02 / 255 * (1 + 1e-6)]) == 0, scales(narrow)


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def _qparams(module) -> set[tuple[float, int]]:
    return {(_f32(float(n.args[1])), int(n.args[2])) for n in module.graph.nodes
            if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)}


def test_the_program_rounds_on_the_shared_graphs_grid():
    """Where the shared graph has a Q/DQ pair, the program takes its grid, scale and zero point,
    not the clip ∩ what the observer saw: XNNPACK then rounds where the shared graph rounds (a
    uint8 pair as int8 with its zero point shifted by -128; a floor's zero point kept)."""
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed (pip install 'edgekit[mobile]')")
    from edgekit.specs import InputSpec
    from exporters.executorch import quant as eq

    torch.manual_seed(0)
    inp = InputSpec("input", (1, 3, 16, 16))
    feeds = [{"input": torch.randn(4, 3, 16, 16).numpy()} for _ in range(4)]
    cal = eq.calibrate(PadNet().eval(), (inp,), feeds, 16, True)
    grids = {"expand": (0.021, 0), "dw": (6 / 255, -128), "project": (0.013, -100), "head": (0.017, 0)}
    cal.ranges = {k: 127 * s for k, (s, _) in grids.items()}
    cal.grids = grids
    exact = _qparams(cal.convert([]))
    assert cal.pinned >= 4, cal.pinned
    assert {(_f32(s), z) for s, z in grids.values()} <= exact, exact
    cal.grids = {}
    clipped = _qparams(cal.convert([]))  # the clip rule: asymmetric over clip ∩ observed, other grids
    assert not {(_f32(s), z) for s, z in grids.values()} & clipped, clipped


class SENet(nn.Module):
    """conv → ReLU → squeeze-excite (average pool → 1x1 fc → sigmoid → scale) → conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        gate = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
        return self.head(x * gate)


def test_an_observer_shared_with_a_feature_map_is_not_pinned_to_the_pooled_clip():
    """XNNPACK's quantizer gives an average pool its input's observer. Pinning it to the clip of
    the layer that reads the pooled vector would saturate the feature map too (untrained
    MobileNetV3 fell to 0.5 dB from the shared graph), so that observer keeps its range."""
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed (pip install 'edgekit[mobile]')")
    from edgekit.specs import InputSpec
    from exporters.executorch import quant as eq
    from exporters.executorch.ranges import observer_consumers
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    torch.manual_seed(0)
    inp = InputSpec("input", (1, 3, 16, 16))
    feeds = [{"input": torch.randn(4, 3, 16, 16).numpy()} for _ in range(4)]
    cal = eq.calibrate(SENet().eval(), (inp,), feeds, 16, True)
    prepared = prepare_pt2e(copy.deepcopy(cal.graph), eq.make_quantizer(True, []))
    shared = [t for t in observer_consumers(prepared).values() if len(t) > 1]
    assert any(any("fc" in r for r in readers) for t in shared for readers in t), observer_consumers(prepared)
    cal.ranges = {"fc": 1e-3}
    cal.convert([])
    assert cal.pinned == 0, cal.pinned  # the fc's input observer is the feature map's: left alone
    cal.ranges = {"fc": 1e-3, "head": 1e-3}
    cal.convert([])
    assert cal.pinned >= 1, cal.pinned  # the scaled map feeds only the head: pinned


class ResidualNet(nn.Module):
    """stem → ReLU → project, added to the stem's output → head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.project = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.project(F.relu(x)))


def test_a_projection_output_before_its_residual_add_takes_the_calibrations_range():
    """XNNPACK quantizes the projection's output before the add; no layer reads that tensor, so
    only the calibration's own range for it (``output_ranges``, from ``add_inputs``) can pin it."""
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed (pip install 'edgekit[mobile]')")
    from edgekit.specs import InputSpec
    from exporters.executorch import quant as eq

    torch.manual_seed(0)
    inp = InputSpec("input", (1, 3, 16, 16))
    feeds = [{"input": torch.randn(4, 3, 16, 16).numpy()} for _ in range(4)]
    cal = eq.calibrate(ResidualNet().eval(), (inp,), feeds, 16, True)

    def project_scale(module):
        q = next(n for n in module.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
                 and "dequantize" not in str(n.target) and "conv" in str(n.args[0].target)
                 and all("add" in str(v.target) for d in n.users for v in d.users))  # read by the add only
        return float(q.args[1])

    before = project_scale(cal.convert([]))
    cal.output_ranges = {"project": 0.01}
    after = project_scale(cal.convert([]))
    assert cal.pinned == 1
    assert after <= 0.02 / 255 * (1 + 1e-6) < before, (before, after)
    cal.output_grids = {"project": (0.003, 0)}  # the shared graph's own pair on that output: its grid exactly
    assert project_scale(cal.convert([])) == pytest.approx(0.003) and cal.pinned == 1
