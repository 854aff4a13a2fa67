"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381), width 1.0, 224x224.

Inverted residual blocks: 1x1 expansion → BN → ReLU6, 3x3 depthwise → BN → ReLU6,
linear 1x1 projection → BN; a residual connection when stride is 1 and the width
does not change. Module layout (and so state-dict keys) as torchvision's
``mobilenet_v2``: ``features.{i}.conv.{j}``, ``classifier.1``; 3,504,872 parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import ConvNormAct, init_weights, make_divisible
from .registry import register_alias, register_model


@dataclass(frozen=True)
class InvertedResidualStage:
    """``repeats`` blocks to ``out_channels``; the first has ``stride``. Table 2 of the paper."""

    expand_ratio: int
    out_channels: int
    repeats: int
    stride: int


MOBILENET_V2_STAGES: list[InvertedResidualStage] = [
    InvertedResidualStage(1, 16, 1, 1),
    InvertedResidualStage(6, 24, 2, 2),
    InvertedResidualStage(6, 32, 3, 2),
    InvertedResidualStage(6, 64, 4, 2),
    InvertedResidualStage(6, 96, 3, 1),
    InvertedResidualStage(6, 160, 3, 2),
    InvertedResidualStage(6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    def __init__(self, stages: list[InvertedResidualStage] = MOBILENET_V2_STAGES, width_mult: float = 1.0,
                 num_classes: int = 1000, dropout: float = 0.2, stem_channels: int = 32, last_channel: int = 1280):
        super().__init__()
        in_ch = make_divisible(stem_channels * width_mult)
        self.last_channel = make_divisible(last_channel * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvNormAct(3, in_ch, 3, stride=2, act=nn.ReLU6)]
        for st in stages:
            out_ch = make_divisible(st.out_channels * width_mult)
            for i in range(st.repeats):
                layers.append(InvertedResidual(in_ch, out_ch, st.stride if i == 0 else 1, st.expand_ratio))
                in_ch = out_ch
        layers.append(ConvNormAct(in_ch, self.last_channel, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v2", params=3_504_872, focus=True,
                paper="Sandler et al. 2018, MobileNetV2 (arXiv:1801.04381)")
def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    return MobileNetV2(num_classes=num_classes)


register_alias("mobilenet", "mobilenet_v2")
