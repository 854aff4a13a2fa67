"""MobileNetV3 Large and Small (Howard et al. 2019, arXiv:1905.02244), width 1.0, 224x224.

Each row of the tables below is one bottleneck block (Tables 1 and 2 of the paper):
1x1 expansion (skipped when it would not widen), kxk depthwise, optional
squeeze-and-excitation (squeeze to expanded/4 rounded to 8, hard-sigmoid gate) and a
linear 1x1 projection; ReLU ("RE") or hard-swish ("HS"). BatchNorm uses eps 1e-3,
momentum 0.01. Module layout and state-dict keys as torchvision's:
``features.{i}.block.{j}``, ``classifier.{0,3}``. Parameters: large 5,483,032,
small 2,542,856.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .layers import ConvNormAct, SqueezeExcitation, init_weights, make_divisible
from .registry import register_alias, register_model


@dataclass(frozen=True)
class BneckConfig:
    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str      # "RE" (ReLU) or "HS" (hard-swish)
    stride: int
    dilation: int = 1

    @property
    def act(self) -> type[nn.Module]:
        return nn.Hardswish if self.activation == "HS" else nn.ReLU


# Columns: input channels, kernel, expanded channels, output channels, SE, activation, stride.
MOBILENET_V3_LARGE = [
    BneckConfig(16, 3, 16, 16, False, "RE", 1),
    BneckConfig(16, 3, 64, 24, False, "RE", 2),
    BneckConfig(24, 3, 72, 24, False, "RE", 1),
    BneckConfig(24, 5, 72, 40, True, "RE", 2),
    BneckConfig(40, 5, 120, 40, True, "RE", 1),
    BneckConfig(40, 5, 120, 40, True, "RE", 1),
    BneckConfig(40, 3, 240, 80, False, "HS", 2),
    BneckConfig(80, 3, 200, 80, False, "HS", 1),
    BneckConfig(80, 3, 184, 80, False, "HS", 1),
    BneckConfig(80, 3, 184, 80, False, "HS", 1),
    BneckConfig(80, 3, 480, 112, True, "HS", 1),
    BneckConfig(112, 3, 672, 112, True, "HS", 1),
    BneckConfig(112, 5, 672, 160, True, "HS", 2),
    BneckConfig(160, 5, 960, 160, True, "HS", 1),
    BneckConfig(160, 5, 960, 160, True, "HS", 1),
]

MOBILENET_V3_SMALL = [
    BneckConfig(16, 3, 16, 16, True, "RE", 2),
    BneckConfig(16, 3, 72, 24, False, "RE", 2),
    BneckConfig(24, 3, 88, 24, False, "RE", 1),
    BneckConfig(24, 5, 96, 40, True, "HS", 2),
    BneckConfig(40, 5, 240, 40, True, "HS", 1),
    BneckConfig(40, 5, 240, 40, True, "HS", 1),
    BneckConfig(40, 5, 120, 48, True, "HS", 1),
    BneckConfig(48, 5, 144, 48, True, "HS", 1),
    BneckConfig(48, 5, 288, 96, True, "HS", 2),
    BneckConfig(96, 5, 576, 96, True, "HS", 1),
    BneckConfig(96, 5, 576, 96, True, "HS", 1),
]

_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class InvertedResidual(nn.Module):
    def __init__(self, cnf: BneckConfig):
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(ConvNormAct(cnf.input_channels, cnf.expanded_channels, 1, norm=_norm, act=cnf.act))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(ConvNormAct(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, stride=stride,
                                  dilation=cnf.dilation, groups=cnf.expanded_channels, norm=_norm, act=cnf.act))
        if cnf.use_se:
            squeeze = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze, gate=nn.Hardsigmoid))
        layers.append(ConvNormAct(cnf.expanded_channels, cnf.out_channels, 1, norm=_norm, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    def __init__(self, setting: list[BneckConfig], last_channel: int, num_classes: int = 1000,
                 dropout: float = 0.2):
        super().__init__()
        first = setting[0].input_channels
        layers: list[nn.Module] = [ConvNormAct(3, first, 3, stride=2, norm=_norm, act=nn.Hardswish)]
        layers += [InvertedResidual(cnf) for cnf in setting]
        last_in = setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(ConvNormAct(last_in, last_out, 1, norm=_norm, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self, linear_std=0.01)  # torchvision's MobileNetV3 init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v3", params=5_483_032, focus=True,
                paper="Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)")
def mobilenet_v3_large(num_classes: int = 1000) -> nn.Module:
    return MobileNetV3(MOBILENET_V3_LARGE, last_channel=1280, num_classes=num_classes)


@register_model("mobilenet_v3", params=2_542_856, focus=True,
                paper="Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)")
def mobilenet_v3_small(num_classes: int = 1000) -> nn.Module:
    return MobileNetV3(MOBILENET_V3_SMALL, last_channel=1024, num_classes=num_classes)


register_alias("mobilenet_v3", "mobilenet_v3_large")
