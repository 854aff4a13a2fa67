"""VGG (Simonyan & Zisserman 2015) with torchvision's layout: ``features`` (a flat
Sequential of conv[-bn]-relu and max-pools, built from a channel table), ``avgpool``
(7x7) and ``classifier``. vgg16 has 138,357,544 parameters, vgg16_bn 138,365,992."""
from __future__ import annotations

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


@register_model("vgg", params=138_357_544, paper=_PAPER)
def vgg16(num_classes: int = 1000) -> nn.Module:
    return vgg(16, batch_norm=False, num_classes=num_classes)


@register_model("vgg", params=138_365_992, paper=_PAPER)
def vgg16_bn(num_classes: int = 1000) -> nn.Module:
    return vgg(16, batch_norm=True, num_classes=num_classes)


register_alias("vgg", "vgg16")
