"""ExecuTorch (XNNPACK) target: FP32 and INT8 (PT2E) parity on the focus models, the INT8
top-1 gate on real photos with the pretrained EfficientNet-Lite0, and a ``.pte`` that
ExecuTorch's runtime loads in a fresh process that imports nothing from edgekit.

Lowering to XNNPACK costs 10-40 s of CPU a model (a long chain of Python graph passes,
proportional to the graph's size, not the resolution), so the default run exports two
programs: MobileNetV1 FP32 at 96×96 and the full-resolution pretrained Lite0 INT8 gate.
The rest of the focus matrix (16 more exports, ~8 min on 2 cores) is marked
``slow``: plain ``make test`` runs it, ``EDGEKIT_FAST=1`` (CI) leaves it out; ``bench/mobile.py parity`` measures the same matrix into JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch.runtime")
pytest.importorskip("executorch.exir")

from edgekit.feeds import photo_feeds  # noqa: E402
from edgekit.artifact import Artifact  # noqa: E402
from edgekit.compare import ROUNDING_FACTOR, Comparison, tolerance_for  # noqa: E402
from edgekit.contracts import ExportContext, ExportRequest  # noqa: E402
from tests.conftest import make_context  # noqa: E402
from edgekit.errors import MissingDependencyError, UsageError  # noqa: E402
from edgekit.models.build import build  # noqa: E402
from edgekit.models.registry import get_spec  # noqa: E402
from edgekit.targets import get_target  # noqa: E402
from edgekit.torch_runner import TorchRunner, fp32_rounding_error  # noqa: E402
from exporters.executorch.exporter import ExecuTorchTarget  # noqa: E402

pytestmark = pytest.mark.mobile

FOCUS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1_g3",
         "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_lite0", "efficientnet_v2_s")
DEFAULT = {("mobilenet_v1", "fp32")}
RES = 96
HELDOUT, CALIB = 16, 32


def cases():
    for name in FOCUS:
        for precision in ExecuTorchTarget.precisions:
            marks = () if (name, precision) in DEFAULT else (pytest.mark.slow,)
            yield pytest.param(name, precision, id=f"{name}-{precision}", marks=marks)


def make_ctx(name: str, precision: str, res: int | None, pretrained: bool = False, heldout: int = HELDOUT,
             calib: int = CALIB, **options):
    spec = get_spec(name)
    model, weights = build(spec, pretrained=pretrained)
    inp = spec.input if res is None else replace(spec.input, shape=(1, spec.input.shape[1], res, res))
    feeds = photo_feeds(spec.preprocess, inp, heldout=heldout, calib=calib)
    req = ExportRequest(model=name, target="executorch", precision=precision, pretrained=pretrained, threads=1,
                        options={"et_max_float": 0, **options})
    logs: list[str] = []
    ctx = make_context(req, spec=spec, model=model, inputs=(inp,), calib=feeds.calib, heldout=feeds.heldout,
                       log=logs.append, stem=name)
    return ctx, weights, logs


def parity(ctx: ExportContext, art: Artifact, tol) -> Comparison:
    comp = Comparison(art.stage, "executorch-xnnpack", art.precision, tol)
    with TorchRunner(ctx.model, ctx.inputs, art.outputs, threads=1) as ref, ExecuTorchTarget().open(art, threads=1) as run:
        for feed in ctx.heldout_feeds:
            comp.add(ref.infer(feed), run.infer(feed))
    return comp


# Runs in a fresh interpreter with nothing but ExecuTorch's runtime: the .pte stands alone.
STANDALONE = r"""
import sys, json, numpy as np, torch
from executorch.runtime import Runtime
pte, npz, out = sys.argv[1:4]
method = Runtime.get().load_program(pte).load_method("forward")
x = np.load(npz)["x"]
ys = [method.execute([torch.from_numpy(np.ascontiguousarray(x[i:i+1]))])[0].numpy().copy() for i in range(len(x))]
np.save(out, np.concatenate(ys))
print(json.dumps({"methods": 1}))
"""


def run_standalone(pte: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    np.savez(tmp / "x.npz", x=x)
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(pte), str(tmp / "x.npz"), str(tmp / "y.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(tmp / "y.npy")


@pytest.mark.parametrize("name,precision", list(cases()))
def test_parity_reduced_resolution(name, precision, tmp_path):
    ctx, weights, _ = make_ctx(name, precision, RES)
    assert not weights.trained
    art = ExecuTorchTarget().export(ctx, tmp_path)
    assert art.path == tmp_path / f"{name}.pte" and art.path.stat().st_size > 100_000
    assert art.meta["delegated_subgraphs"] >= 1
    comp = parity(ctx, art, tolerance_for(precision, get_spec(name).tolerance.get(precision)))
    s = comp.primary()
    if precision == "fp32":
        # XNNPACK may not be further from the FP32 model than PyTorch's own FP32 is from FP64
        # (EfficientNetV2-S at 96x96 is ill-conditioned: torch FP32 vs FP64 0.036 on logits of ~120)
        floor = 0.0 if s.max_abs < 1e-4 else fp32_rounding_error(ctx.model, ctx.inputs, ctx.heldout_feeds, HELDOUT)
        assert s.max_abs < max(1e-4, ROUNDING_FACTOR * floor) and s.cosine > 0.99999, (floor, comp.to_dict())
        comp.tolerance = replace(comp.tolerance, max_abs_floor=ROUNDING_FACTOR * floor)  # as the pipeline does
        assert comp.passed, comp.failures
    else:
        # Deterministic-init weights are not INT8-friendly on real photos (simulated all-INT8
        # cosine 0.89-0.95, as on the other INT8 targets), so the gate's verdict is asserted, not
        # a pass: what the exporter's gate measured on ExecuTorch's runtime is what parity finds.
        gate = art.meta["gate"]
        # not garbage: 0.89-0.95 on most focus models; 0.77 measured on EfficientNetV2-S (deepest, ill-conditioned)
        assert s.nonfinite == 0 and s.cosine > 0.7, comp.to_dict()
        assert abs(gate["cosine"] - s.cosine) < 1e-6 and gate["rows"] == HELDOUT, gate
        # untrained weights: quantization accuracy is "not assessed" (edgekit/verdict.py), so the
        # gate passes whatever the cosine (0.97 here: below the trained-weights floor of 0.99)
        assert gate["passed"] and not gate["failures"] and gate["trained_weights"] is False, gate
        assert art.meta["quantization"]["calibration_rows"] == CALIB


@pytest.fixture(scope="module")
def lite0_int8(tmp_path_factory):
    """Pretrained EfficientNet-Lite0 at 224×224, INT8 (every layer), calibrated and gated on the bundled photos.
    Its lowering alone takes about a minute on 2 cores, so CI (EDGEKIT_FAST=1) leaves out the tests that
    use it, as it leaves out the other full-resolution pretrained Lite0 acceptance tests."""
    ctx, weights, logs = make_ctx("efficientnet_lite0", "int8", None, pretrained=True, heldout=200, calib=64)
    assert weights.trained
    out = tmp_path_factory.mktemp("lite0")
    art = ExecuTorchTarget().export(ctx, out)
    return ctx, art, logs


@pytest.fixture(scope="module")
def small_int8(tmp_path_factory):
    """LeNet-5 (deterministic init) at its own 32×32, INT8 on every layer: the INT8 program CI runs
    standalone. What these tests check is the program and the runner, not the network (MobileNetV2 at
    96×96 took 40 s to lower, 2026-12-07); the focus networks' INT8 lowering is checked in
    test_executorch_ranges.py and tests/calibration/test_int8_transfer.py."""
    ctx, _, logs = make_ctx("lenet5", "int8", None)
    art = ExecuTorchTarget().export(ctx, tmp_path_factory.mktemp("small"))
    return ctx, art, logs


# which INT8 program, and how close to the FP32 module it must stay (untrained weights quantize
# worse: cosine 0.89-0.95 on the focus models, see test_parity_reduced_resolution)
PROGRAMS = [pytest.param("small_int8", 0.85, id="lenet5"),
            pytest.param("lite0_int8", 0.98, id="lite0-pretrained", marks=pytest.mark.slow)]


@pytest.mark.slow
def test_lite0_int8_top1_gate(lite0_int8):
    """The gate runs the lowered program on 200 held-out photo crops against FP32 PyTorch with the
    pipeline's INT8 tolerance (top-1 ≥ 98%, cosine ≥ 0.99) and records its verdict.

    Measured with every layer INT8: top-1 agreement ~87-91%, cosine ~0.988 (5 held-out photos,
    many texture crops whose top-2 logits nearly tie; top-5 agreement is ~100%). Before the ReLU6
    fusion in exporters/executorch/quant.py the same model scored cosine 0.89 / top-1 72%, so the
    floors below fail if that regresses."""
    ctx, art, logs = lite0_int8
    gate, q = art.meta["gate"], art.meta["quantization"]
    print("lite0 ExecuTorch INT8 gate:", {k: gate[k] for k in ("top1", "top5", "cosine", "sqnr_db", "rows", "passed")})
    assert gate["trained_weights"] and gate["rows"] >= 200, gate
    assert gate["tolerance"]["top1"] == 0.98 and gate["tolerance"]["cosine"] == 0.99
    assert gate["top1"] >= 0.82 and gate["top5"] >= 0.97 and gate["cosine"] >= 0.985, gate
    assert gate["passed"] == (gate["top1"] >= 0.98 and gate["cosine"] >= 0.99), gate
    assert any(("INT8 gate passed" if gate["passed"] else "INT8 gate failed") in line for line in logs)
    assert q["calibration_rows"] == 64 and q["calibration_batched"] and q["fused_clamps"] == 33, q
    assert q["float_layers"] == [] and art.meta["non_delegated_count"] == 0


@pytest.mark.parametrize("program,min_cosine", PROGRAMS)
def test_int8_pte_runs_standalone(program, min_cosine, request, tmp_path):
    """The .pte loads in a fresh process with ExecuTorch's runtime alone; its outputs are edgekit's
    runner's outputs and stay close to the FP32 model's."""
    ctx, art, _ = request.getfixturevalue(program)
    feeds = list(ctx.heldout_feeds)
    feeds = feeds[::max(1, len(feeds) // 8)][:8]  # 8 crops spread over the held-out photos
    x = np.concatenate([f["input"] for f in feeds])
    got = run_standalone(art.path, x, tmp_path)
    with TorchRunner(ctx.model, ctx.inputs, art.outputs, threads=1) as ref:
        want = np.concatenate([ref.infer(f)["output"] for f in feeds])
    assert got.shape == want.shape == (8, ctx.spec.num_classes)
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos >= min_cosine, cos
    assert art.meta["quantization"]["float_layers"] == [] and art.meta["non_delegated_count"] == 0
    with ExecuTorchTarget().open(Artifact.from_dict(json.loads(json.dumps(art.to_dict()))), threads=1) as run:
        same = np.concatenate([run.infer(f)["output"] for f in feeds])
    np.testing.assert_allclose(same, got, rtol=0, atol=1e-5)  # edgekit's runner == the bare runtime


@pytest.mark.parametrize("program,min_cosine", PROGRAMS)
def test_runner_threads_and_batch(program, min_cosine, request):
    """threads=1 gives the same numbers as the default pool; a batch of 3 runs row by row."""
    ctx, art, _ = request.getfixturevalue(program)
    feeds = list(ctx.heldout_feeds)[:3]
    batch = {"input": np.concatenate([f["input"] for f in feeds])}
    with ExecuTorchTarget().open(art, threads=1) as one:
        rows = np.concatenate([one.infer(f)["output"] for f in feeds])
        assert one.name == "executorch-xnnpack" and one.outputs == ("output",)
    with ExecuTorchTarget().open(art) as many:
        stacked = many.infer(batch)["output"]
    assert stacked.shape == (3, ctx.spec.num_classes)
    np.testing.assert_allclose(stacked, rows, rtol=0, atol=1e-4)


def test_registry_and_check(monkeypatch):
    t = get_target("pte")
    assert isinstance(t, ExecuTorchTarget) and get_target("xnnpack").name == "executorch"
    ok, version = t.available()
    assert ok and version.startswith("executorch ")
    t.check(ExportRequest(model="mobilenet_v3", target="executorch", precision="int8"))
    with pytest.raises(UsageError, match="does not support fp16"):
        t.check(ExportRequest(model="mobilenet_v3", target="executorch", precision="fp16"))
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # as if the package were not installed
    with pytest.raises(MissingDependencyError) as err:
        t.check(ExportRequest(model="mobilenet_v3", target="executorch"))
    assert err.value.extra == "mobile" and "edgekit[mobile]" in str(err.value)


def test_corrupt_pte_is_an_artifact_error(tmp_path):
    from edgekit.errors import ArtifactError
    from edgekit.specs import InputSpec

    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program" * 100)
    art = Artifact(path=bad, stage="executorch-fp32", format="pte", precision="fp32", target="executorch",
                   inputs=(InputSpec(),))
    with pytest.raises(ArtifactError, match="ExecuTorch cannot load bad.pte"):
        with ExecuTorchTarget().open(art):
            pass


@pytest.mark.slow
def test_mixed_precision_fallback(tmp_path):
    """One calibration serves every candidate set of float layers. A gate that nothing meets
    keeps every layer INT8 (2 trials: none, the largest set); a gate between the all-INT8 and
    the 4-float-layer cosines keeps the smallest passing set of leading layers in float, and
    the result still lowers to an XNNPACK program that runs."""
    ctx, _, logs = make_ctx("mobilenet_v2", "int8", RES, et_max_float=4, et_select_samples=8)
    ctx.request.tolerance = {"cosine": 0.9999999}
    (tmp_path / "a").mkdir()  # exporters write into an existing folder (the pipeline's atomic one)
    (tmp_path / "b").mkdir()
    q = ExecuTorchTarget().export(ctx, tmp_path / "a").meta["quantization"]
    trials = q["selection_trials"]
    assert [t["float_layers"] for t in trials] == [0, 4] and not any(t["passed"] for t in trials), q
    assert q["float_layers"] == [] and any("keeping every layer INT8" in line for line in logs)
    c0, c4 = trials[0]["cosine"], trials[1]["cosine"]
    assert c4 > c0, trials
    ctx.request.tolerance = {"cosine": (c0 + c4) / 2}
    art = ExecuTorchTarget().export(ctx, tmp_path / "b")
    q = art.meta["quantization"]
    assert [t["float_layers"] for t in q["selection_trials"]] == [0, 4, 2], q
    assert len(q["float_layers"]) == (2 if q["selection_trials"][2]["passed"] else 4), q
    assert q["float_layers"][0].startswith("features.0"), q["float_layers"]
    comp = parity(ctx, art, tolerance_for("int8"))
    assert comp.primary().nonfinite == 0 and abs(comp.primary().cosine - art.meta["gate"]["cosine"]) < 1e-6


def test_constants_of_decompositions_are_folded_into_the_delegate(tmp_path):
    """``hardsigmoid`` (MobileNetV3's squeeze-excite gate) decomposes into ops on lifted scalar
    constants, each behind a ``_to_dim_order_copy`` that XNNPACK does not take: without folding,
    every inference ran those copies on the portable kernels, outside the delegate."""
    import torch
    from torch import nn

    from exporters.executorch.exporter import lower_to_pte
    from exporters.executorch.runner import ExecuTorchRunner

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = self.conv(x)
            return y * nn.functional.hardsigmoid(self.fc(y.mean((2, 3), keepdim=True)))

    torch.manual_seed(0)
    model = Gate().eval()
    info = lower_to_pte(model, (torch.zeros(1, 3, 16, 16),), tmp_path / "gate.pte")
    assert info["delegated_subgraphs"] == 1 and info["non_delegated_count"] == 0, info
    x = torch.randn(1, 3, 16, 16)
    with ExecuTorchRunner(tmp_path / "gate.pte") as r, torch.no_grad():
        out = r.infer({"input": x.numpy()})["output"]
        assert np.abs(out - model(x).numpy()).max() < 1e-4
