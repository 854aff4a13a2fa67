"""ncnn target (pnnx → .param/.bin): FP32 and FP16 parity on the focus models at 96×96,
the ``--int8`` refusal, and a model folder that ncnn alone loads in a fresh process.

Each export traces the model and runs the pnnx converter (2-30 s of CPU); the default
run covers ShuffleNetV2 ×1.0 at both precisions. The rest of the focus matrix
(16 more exports, ~4 min on 2 cores) is marked ``slow``: plain ``make test`` runs it,
``EDGEKIT_FAST=1`` (CI) leaves it out;
``bench/mobile.py parity`` measures the same matrix into JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.feeds import photo_feeds  # noqa: E402
from edgekit.artifact import Artifact  # noqa: E402
from edgekit.compare import ROUNDING_FACTOR, Comparison, tolerance_for  # noqa: E402
from edgekit.contracts import ExportContext, ExportRequest  # noqa: E402
from tests.conftest import make_context  # noqa: E402
from edgekit.errors import ArtifactError, MissingDependencyError, UsageError  # noqa: E402
from edgekit.models.build import build  # noqa: E402
from edgekit.models.registry import get_spec  # noqa: E402
from edgekit.targets import get_target  # noqa: E402
from edgekit.torch_runner import TorchRunner, fp32_rounding_error  # noqa: E402
from exporters.ncnn.exporter import NcnnTarget  # noqa: E402

pytestmark = pytest.mark.mobile

FOCUS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1_g3",
         "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_lite0", "efficientnet_v2_s")
DEFAULT = {"shufflenet_v2_x1_0"}
RES = 96
HELDOUT = 16
_MODELS: dict[str, tuple] = {}


def model_and_feeds(name: str):
    """Built once per module: the deterministic-init model and its 96×96 held-out photos."""
    if name not in _MODELS:
        spec = get_spec(name)
        model, weights = build(spec)
        inp = replace(spec.input, shape=(1, spec.input.shape[1], RES, RES))
        feeds = photo_feeds(spec.preprocess, inp, heldout=HELDOUT, calib=1).heldout
        _MODELS[name] = (spec, model, weights, inp, feeds)
    return _MODELS[name]


def export(name: str, precision: str, workdir: Path) -> tuple[ExportContext, Artifact]:
    spec, model, _, inp, feeds = model_and_feeds(name)
    req = ExportRequest(model=name, target="ncnn", precision=precision)
    ctx = make_context(req, spec=spec, model=model, inputs=(inp,), heldout=feeds, stem=name)
    return ctx, NcnnTarget().export(ctx, workdir)


def parity(ctx: ExportContext, art: Artifact) -> Comparison:
    tol = tolerance_for(art.precision, ctx.spec.tolerance.get(art.precision))
    comp = Comparison(art.stage, "ncnn", art.precision, tol)
    with TorchRunner(ctx.model, ctx.inputs, art.outputs, threads=1) as ref, NcnnTarget().open(art, threads=1) as run:
        for feed in ctx.heldout_feeds:
            comp.add(ref.infer(feed), run.infer(feed))
    return comp


# measured: cosine 0.992 (FP16 storage through an ill-conditioned 96×96 EfficientNetV2-S)
KNOWN = {("efficientnet_v2_s", "fp16"): "FP16 cosine 0.992 < 0.999 at 96x96 (docs/mobile.md)"}


def cases():
    for name in FOCUS:
        for precision in NcnnTarget.precisions:
            marks = () if name in DEFAULT else (pytest.mark.slow,)
            if (name, precision) in KNOWN:
                marks = (*marks, pytest.mark.xfail(reason=KNOWN[name, precision], strict=True))
            yield pytest.param(name, precision, id=f"{name}-{precision}", marks=marks)


@pytest.fixture(scope="module")
def shufflenet(tmp_path_factory):
    """ShuffleNetV2 ×1.0 exported at both precisions, shared by the tests below."""
    out = {}
    for precision in NcnnTarget.precisions:
        out[precision] = export("shufflenet_v2_x1_0", precision, tmp_path_factory.mktemp(f"shufflenet-{precision}"))
    return out


@pytest.mark.parametrize("name,precision", list(cases()))
def test_parity_reduced_resolution(name, precision, shufflenet, tmp_path):
    if name == "shufflenet_v2_x1_0":
        ctx, art = shufflenet[precision]
    else:
        ctx, art = export(name, precision, tmp_path)
    assert art.path.name == f"{name}_ncnn" and art.format == "ncnn"
    assert sorted(p.name for p in art.path.iterdir()) == [f"{name}.ncnn.bin", f"{name}.ncnn.param"]
    comp = parity(ctx, art)
    s = comp.primary()
    assert s.rows == HELDOUT
    if precision == "fp32":
        # ncnn may not be further from the FP32 model than PyTorch's own FP32 is from FP64
        # (EfficientNetV2-S at 96×96 is ill-conditioned: 0.027 there on logits of ~120)
        # (FP64 convolutions are slow: measured only when the plain bound is missed)
        floor = 0.0 if s.max_abs < 1e-4 else fp32_rounding_error(ctx.model, ctx.inputs, ctx.heldout_feeds, HELDOUT)
        assert s.max_abs < max(1e-4, 2 * floor) and s.cosine > 0.99999, (floor, comp.to_dict())
        # the pipeline's FP32 verdict uses the same floor (edgekit.compare.ROUNDING_FACTOR x torch's own error)
        comp.tolerance = replace(comp.tolerance, max_abs_floor=ROUNDING_FACTOR * floor)
    else:
        assert s.cosine > 0.999 and s.sqnr_db > 25, comp.to_dict()
        assert s.max_abs > 0, "FP16 storage/arithmetic should not be bit-exact with FP32 torch"
    assert comp.passed, comp.failures


def test_fp16_weights_are_half_size(shufflenet):
    (_, fp32), (_, fp16) = shufflenet["fp32"], shufflenet["fp16"]
    assert fp16.meta["weights_fp16"] and not fp32.meta["weights_fp16"]
    assert 0.45 < fp16.size_bytes / fp32.size_bytes < 0.6
    assert fp16.meta["runtime_options"] == {"use_fp16_storage": True, "use_fp16_arithmetic": True}
    assert fp32.meta["layers"] == fp16.meta["layers"] > 50
    assert fp32.meta["output_shapes"] == [[1, 1000]]


# A fresh interpreter with nothing but ncnn: the .param/.bin pair stands alone.
STANDALONE = r"""
import sys, numpy as np, ncnn
param, weights, npz, out = sys.argv[1:5]
net = ncnn.Net()
net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
assert net.load_param(param) == 0 and net.load_model(weights) == 0
x = np.load(npz)["x"]
ys = []
for row in x:
    a = np.ascontiguousarray(row)
    m = ncnn.Mat(a)
    ex = net.create_extractor()
    ex.input(net.input_names()[0], m)
    ret, y = ex.extract(net.output_names()[0])
    ys.append(np.array(y, copy=True))
np.save(out, np.stack(ys))
"""


def test_fp32_model_runs_standalone(shufflenet, tmp_path):
    ctx, art = shufflenet["fp32"]
    feeds = list(ctx.heldout_feeds)[:4]
    x = np.concatenate([f["input"] for f in feeds])
    np.savez(tmp_path / "x.npz", x=x)
    param, weights = art.path / "shufflenet_v2_x1_0.ncnn.param", art.path / "shufflenet_v2_x1_0.ncnn.bin"
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(param), str(weights), str(tmp_path / "x.npz"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(tmp_path / "y.npy")
    with TorchRunner(ctx.model, ctx.inputs, art.outputs, threads=1) as ref:
        want = np.concatenate([ref.infer(f)["output"] for f in feeds])
    assert got.shape == want.shape == (4, 1000)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_runner_batch_and_manifest_round_trip(shufflenet):
    """A batch of 3 runs row by row; an Artifact read back from its dict opens the same model."""
    ctx, art = shufflenet["fp16"]
    feeds = list(ctx.heldout_feeds)[:3]
    batch = {"input": np.concatenate([f["input"] for f in feeds])}
    again = Artifact.from_dict(json.loads(json.dumps(art.to_dict())))
    again.verify()
    with NcnnTarget().open(again, threads=1) as run:  # >1 OpenMP threads crawl on an oversubscribed CI box
        assert run.name == "ncnn" and run.outputs == ("output",)
        stacked = run.infer(batch)["output"]
        rows = np.concatenate([run.infer(f)["output"] for f in feeds])
    assert stacked.shape == (3, 1000)
    np.testing.assert_array_equal(stacked, rows)


def test_int8_is_refused_with_the_reason():
    with pytest.raises(UsageError, match="ncnn2table and ncnn2int8") as err:
        NcnnTarget().check(ExportRequest(model="shufflenet_v2", target="ncnn", precision="int8"))
    assert "--target executorch" in err.value.hint


def test_int8_cli_error(edgekit_cli):
    proc = edgekit_cli("export", "shufflenet_v2", "--target", "ncnn", "--int8", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "ncnn2table" in proc.stderr + proc.stdout


def test_registry_and_check(monkeypatch):
    t = get_target("pnnx")
    assert isinstance(t, NcnnTarget) and t.precisions == ("fp32", "fp16")
    ok, version = t.available()
    assert ok and version.startswith("ncnn ")
    t.check(ExportRequest(model="shufflenet_v2", target="ncnn", precision="fp16"))
    monkeypatch.setitem(sys.modules, "pnnx", None)  # as if the package were not installed
    with pytest.raises(MissingDependencyError) as err:
        t.check(ExportRequest(model="shufflenet_v2", target="ncnn"))
    assert err.value.extra == "mobile"


def test_folder_without_model_is_an_artifact_error(tmp_path):
    from edgekit.specs import InputSpec

    (tmp_path / "m_ncnn").mkdir()
    (tmp_path / "m_ncnn" / "m.ncnn.param").write_text("7767517\n1 1\nNotALayer x 0 1 x\n")
    art = Artifact(path=tmp_path / "m_ncnn", stage="ncnn-fp32", format="ncnn", precision="fp32", target="ncnn",
                   inputs=(InputSpec(),))
    with pytest.raises(ArtifactError, match="one .ncnn.param and one .ncnn.bin"):
        with NcnnTarget().open(art):
            pass
    (tmp_path / "m_ncnn" / "m.ncnn.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match="cannot parse"):
        with NcnnTarget().open(art):
            pass
