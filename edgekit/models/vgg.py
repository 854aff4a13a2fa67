"""VGG (Simonyan & Zisserman 2015) with torchvision's layout: ``features`` (a flat
Sequential of conv[-bn]-relu and max-pools, built from a channel table), ``avgpool``
(7x7) and ``classifier``. VGG-11/13/16/19, each with and without batch norm, as torchvision builds them
(vgg16 has 138,357,544 parameters, vgg16_bn 138,365,992)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .layers import init_weights
from .registry import register_alias, register_model

POOL = "M"
# Channel tables by depth: an int is a 3x3 conv with that many outputs, "M" a 2x2 max-pool.
CFGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: list[int | str], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == POOL:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_ch = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg(depth: int, batch_norm: bool = False, num_classes: int = 1000) -> VGG:
    return VGG(make_features(CFGS[depth], batch_norm), num_classes)


_PAPER = "Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image Recognition"


# name → (depth, batch norm, parameters): torchvision's published counts
VARIANTS: dict[str, tuple[int, bool, int]] = {
    "vgg11": (11, False, 132_863_336), "vgg11_bn": (11, True, 132_868_840),
    "vgg13": (13, False, 133_047_848), "vgg13_bn": (13, True, 133_053_736),
    "vgg16": (16, False, 138_357_544), "vgg16_bn": (16, True, 138_365_992),
    "vgg19": (19, False, 143_667_240), "vgg19_bn": (19, True, 143_678_248),
}
for _name, (_depth, _bn, _params) in VARIANTS.items():
    register_model("vgg", name=_name, params=_params, paper=_PAPER)(partial(vgg, _depth, _bn))

register_alias("vgg", "vgg16")
