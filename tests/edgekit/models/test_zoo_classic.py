"""Family-specific facts of the classic zoo networks (the generic registry-parametrized
checks - build, shape, params, ONNX parity - live in test_zoo.py).

Key names and shapes are checked on the meta device (no memory, no init cost)."""
from __future__ import annotations

import pytest
import torch

from edgekit.models import get_spec, resolve_name
from edgekit.models.googlenet import GoogLeNet, GoogLeNetOutputs
from edgekit.models.inception import Inception3, InceptionOutputs
from edgekit.models.nin import nin
from edgekit.models.resnet import Bottleneck


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These forwards are tiny: one intra-op thread avoids spinning on a shared, loaded CPU."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def meta_state(name: str, **kw) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return get_spec(name).builder(**kw).state_dict()


def n_params(model: torch.nn.Module, skip: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not (skip and n.startswith(skip)))


@pytest.mark.parametrize("alias, target", [
    ("vgg", "vgg16"), ("resnet", "resnet50"), ("resnext", "resnext50_32x4d"), ("se_resnet", "se_resnet50"),
    ("densenet", "densenet121"), ("inception", "inception_v3"), ("lenet", "lenet5"), ("googlenet", "googlenet"),
    ("preact_resnet", "preact_resnet50"), ("wide_resnet", "wide_resnet50_2"),
])
def test_family_alias(alias, target):
    assert resolve_name(alias)[0] == target


# torchvision key names (and shapes) users' checkpoints carry
TORCHVISION_KEYS = {
    "alexnet": {"features.10.weight": (256, 256, 3, 3), "classifier.1.weight": (4096, 9216),
                "classifier.6.weight": (1000, 4096)},
    "vgg16": {"features.28.weight": (512, 512, 3, 3), "classifier.0.weight": (4096, 25088),
              "classifier.6.bias": (1000,)},
    "vgg16_bn": {"features.40.weight": (512, 512, 3, 3), "features.41.running_var": (512,),
                 "classifier.6.weight": (1000, 4096)},
    "resnet18": {"layer4.1.conv2.weight": (512, 512, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "fc.weight": (1000, 512)},
    "resnet50": {"layer4.2.conv3.weight": (2048, 512, 1, 1), "layer1.0.downsample.1.running_mean": (256,),
                 "fc.weight": (1000, 2048), "bn1.weight": (64,)},
    "resnext50_32x4d": {"layer1.0.conv2.weight": (128, 4, 3, 3), "layer4.2.conv2.weight": (1024, 32, 3, 3)},
    "densenet121": {"features.conv0.weight": (64, 3, 7, 7),
                    "features.denseblock4.denselayer16.norm1.weight": (992,),
                    "features.denseblock4.denselayer16.conv2.weight": (32, 128, 3, 3),
                    "features.transition3.conv.weight": (512, 1024, 1, 1), "features.norm5.running_var": (1024,),
                    "classifier.weight": (1000, 1024)},
    # the wide bottleneck doubles the 3x3's width; ResNeXt-101's groups carry 8 or 4 channels each
    "wide_resnet50_2": {"layer1.0.conv2.weight": (128, 128, 3, 3), "layer4.2.conv3.weight": (2048, 1024, 1, 1)},
    "resnext101_32x8d": {"layer1.0.conv2.weight": (256, 8, 3, 3), "layer3.22.conv2.weight": (1024, 32, 3, 3)},
    "resnext101_64x4d": {"layer1.0.conv2.weight": (256, 4, 3, 3), "layer4.2.conv2.weight": (2048, 32, 3, 3)},
    "resnet152": {"layer2.7.conv3.weight": (512, 128, 1, 1), "layer3.35.bn3.running_var": (1024,)},
    "vgg19_bn": {"features.49.weight": (512, 512, 3, 3), "features.50.running_var": (512,)},
    "densenet161": {"features.conv0.weight": (96, 3, 7, 7), "features.denseblock4.denselayer24.conv2.weight": (48, 192, 3, 3),
                    "classifier.weight": (1000, 2208)},
    "googlenet": {"conv1.conv.weight": (64, 3, 7, 7), "inception5b.branch4.1.conv.weight": (128, 832, 1, 1),
                  "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),  # torchvision's 3x3 "5x5"
                  "aux1.fc1.weight": (1024, 2048), "aux2.conv.bn.running_var": (128,), "fc.weight": (1000, 1024)},
    "inception_v3": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
                     "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,), "AuxLogits.conv1.conv.weight": (768, 128, 5, 5),
                     "AuxLogits.fc.weight": (1000, 768), "fc.weight": (1000, 2048)},
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_torchvision_key_names(name):
    sd = meta_state(name)
    got = {k: tuple(sd[k].shape) for k in TORCHVISION_KEYS[name] if k in sd}
    assert got == TORCHVISION_KEYS[name]


def test_se_resnet50_se_keys_and_squeeze():
    sd = meta_state("se_resnet50")
    se = sorted(k for k in sd if ".se." in k)
    assert len(se) == 16 * 4                         # 3+4+6+3 blocks x fc1/fc2 weight/bias
    assert tuple(sd["layer1.0.se.fc1.weight"].shape) == (16, 256, 1, 1)    # reduction 16
    assert tuple(sd["layer4.2.se.fc2.weight"].shape) == (2048, 128, 1, 1)
    # everything else is exactly resnet50: a resnet50 checkpoint fills all but the SE weights
    assert set(sd) - set(se) == set(meta_state("resnet50"))


@torch.no_grad()
def test_se_sits_before_the_residual_add():
    torch.manual_seed(0)
    block = Bottleneck(256, 64, se_reduction=16).eval()
    x = torch.randn(2, 256, 8, 8)
    block.se.fc2.bias.fill_(-100.0)                     # gate = sigmoid(-100) = 0: residual branch muted
    assert torch.allclose(block(x), torch.relu(x), atol=1e-6)  # so the add comes after SE
    block.se.fc2.bias.fill_(100.0)                      # gate = 1: SE passes bn3's output through
    gated = block(x)
    block.se = None
    assert torch.allclose(gated, block(x), atol=1e-6)


def test_googlenet_params_with_and_without_aux():
    # registered: torchvision's deployed 6,624,904; the module also holds the aux heads, counted apart
    with torch.device("meta"):
        model = GoogLeNet()
    assert n_params(model) == 13_004_888
    assert n_params(model, skip="aux") == get_spec("googlenet").params == 6_624_904
    assert get_spec("googlenet").aux_params == 13_004_888 - 6_624_904


@torch.no_grad()
def test_googlenet_aux_heads_only_in_training():
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=10)
    x = torch.randn(2, 3, 96, 96)
    out = model.train()(x)
    assert isinstance(out, GoogLeNetOutputs) and [tuple(t.shape) for t in out] == [(2, 10)] * 3
    assert not torch.allclose(out.aux_logits1, out.aux_logits2)
    y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 10)
    # transform_input re-normalises ImageNet-normalised input to (x - 0.5) / 0.5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = model((x * std + mean - 0.5) / 0.5)
    model.transform_input = True
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_inception_v3_spec_and_params():
    spec = get_spec("inception_v3")
    assert spec.input.shape == (1, 3, 299, 299)
    assert (spec.preprocess.resize, spec.preprocess.crop) == (342, 299)
    with torch.device("meta"):
        model = Inception3()
    assert n_params(model) == 27_161_264                      # torchvision, with AuxLogits
    assert n_params(model, skip="AuxLogits") == 23_834_568    # torchvision, aux_logits=False
    assert (spec.params, spec.aux_params) == (23_834_568, 27_161_264 - 23_834_568)


@torch.no_grad()
def test_inception_v3_aux_only_in_training():
    torch.manual_seed(0)
    model = Inception3(num_classes=10)
    out = model.train()(torch.randn(2, 3, 299, 299))   # the aux head needs the full 17x17 grid
    assert isinstance(out, InceptionOutputs) and [tuple(t.shape) for t in out] == [(2, 10), (2, 10)]
    y = model.eval()(torch.randn(1, 3, 107, 107))       # eval skips the aux head: small inputs work
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 10)


@torch.no_grad()
def test_lenet5_is_grayscale_32_with_10_classes():
    spec = get_spec("lenet5")
    assert spec.input.shape == (1, 1, 32, 32) and spec.num_classes == 10
    assert (spec.preprocess.channels, spec.preprocess.mean, spec.preprocess.std) == (1, (0.5,), (0.5,))
    assert (spec.preprocess.resize, spec.preprocess.crop) == (32, 32)
    model = spec.builder()
    assert tuple(model(torch.randn(3, 1, 32, 32)).shape) == (3, 10)


@pytest.mark.parametrize("n", [10, 1000])
def test_nin_param_formula(n):
    # 1,980,608 for the first three mlpconv blocks + 2n² + 3459n for the class block (docstring)
    with torch.device("meta"):
        model = nin(num_classes=n)
    assert n_params(model) == 1_980_608 + 2 * n * n + 3459 * n
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())   # GAP is the classifier


@torch.no_grad()
def test_nin_global_pooling_accepts_other_sizes():
    torch.manual_seed(0)
    model = nin(num_classes=10).eval()
    assert tuple(model(torch.randn(1, 3, 160, 160)).shape) == (1, 10)


def test_preact_resnet_keys_and_counts():
    sd18, sd50 = meta_state("preact_resnet18"), meta_state("preact_resnet50")
    assert "bn1.weight" not in sd18 and "downsample.1.weight" not in " ".join(sd18)   # no stem / shortcut BN
    assert tuple(sd18["layer2.0.bn1.weight"].shape) == (64,)          # BN before the conv: input channels
    assert tuple(sd18["layer2.0.downsample.weight"].shape) == (128, 64, 1, 1)
    assert tuple(sd50["layer4.0.bn1.weight"].shape) == (1024,)
    assert tuple(sd50["bn_final.weight"].shape) == (2048,) and tuple(sd50["fc.weight"].shape) == (1000, 2048)
    # torchvision's counts minus stem BN and shortcut BNs, BNs moved to inputs, plus the final BN
    assert get_spec("preact_resnet18").params == 11_689_512 - 128 - 2 * 896 - 2 * 448 + 2 * 512
    assert get_spec("preact_resnet50").params == 25_557_032 - 7_680


@torch.no_grad()
def test_preact_block_is_identity_when_its_last_conv_is_zero():
    from edgekit.models.preact_resnet import PreActBottleneck

    torch.manual_seed(0)
    block = PreActBottleneck(256, 64).eval()
    x = torch.randn(2, 256, 8, 8)                       # negative values too: no ReLU after the add
    block.conv3.weight.zero_()
    assert torch.equal(block(x), x)


@torch.no_grad()
def test_bn_inception_channels_and_keys():
    from edgekit.models.bn_inception import BNInception

    sd = meta_state("bn_inception")
    assert tuple(sd["inception3a.branch3.2.conv.weight"].shape) == (96, 96, 3, 3)   # 5x5 → two 3x3
    assert "inception3c.branch1.conv.weight" not in sd and "inception3c.branch4.1.conv.weight" not in sd
    assert tuple(sd["fc.weight"].shape) == (1000, 1024)
    assert not any(k.endswith("conv.bias") for k in sd)                             # BN after every conv
    torch.manual_seed(0)
    model = BNInception(num_classes=10).eval()
    x = model.maxpool2(model.conv2(model.conv2_reduce(model.maxpool1(model.conv1(torch.randn(1, 3, 224, 224))))))
    sizes = {}
    for name in ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        x = getattr(model, f"inception{name}")(x)
        sizes[name] = tuple(x.shape[1:])
    assert sizes["3b"] == (320, 28, 28) and sizes["3c"] == (576, 14, 14)
    assert sizes["4e"] == (1056, 7, 7) and sizes["5b"] == (1024, 7, 7)
