"""MobileNetV1 (Howard et al. 2017, arXiv:1704.04861), width 1.0, 224x224.

A 3x3 stride-2 stem, then 13 depthwise-separable blocks (3x3 depthwise conv → BN →
ReLU, 1x1 pointwise conv → BN → ReLU), global average pooling and one linear layer.
Convs carry no bias (BatchNorm follows each). Parameter count: 4,231,976 (Table 1 of
the paper, the Keras "trainable" figure); BatchNorm running statistics are buffers.

torchvision has no MobileNetV1, so the key names follow its MobileNetV2:
``features.0`` the stem, ``features.{1..13}.depthwise/pointwise.{0,1}``, then
``classifier.1`` (after a dropout at ``classifier.0``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import ConvNormAct, init_weights
from .registry import register_model

# (output channels, stride) of each depthwise-separable block, Table 1 of the paper.
MOBILENET_V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2),
    (1024, 1),
]


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv → BN → ReLU, then 1x1 pointwise conv → BN → ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__(OrderedDict(
            depthwise=ConvNormAct(in_ch, in_ch, 3, stride=stride, groups=in_ch),
            pointwise=ConvNormAct(in_ch, out_ch, 1),
        ))
        self.out_channels = out_ch


class MobileNetV1(nn.Module):
    def __init__(self, blocks: list[tuple[int, int]] = MOBILENET_V1_BLOCKS, stem_channels: int = 32,
                 num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [ConvNormAct(3, stem_channels, 3, stride=2)]
        in_ch = stem_channels
        for out_ch, stride in blocks:
            layers.append(DepthwiseSeparable(in_ch, out_ch, stride))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(in_ch, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v1", params=4_231_976, focus=True,
                paper="Howard et al. 2017, MobileNets (arXiv:1704.04861)")
def mobilenet_v1(num_classes: int = 1000) -> nn.Module:
    return MobileNetV1(num_classes=num_classes)
