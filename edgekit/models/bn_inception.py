"""BN-Inception / Inception-v2 (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", Figure 5): GoogLeNet with every 5x5
conv replaced by two 3x3 convs, BatchNorm after every conv, average pooling in most pool
branches, and stride-2 blocks (3c, 4e) that concatenate a max-pooled pass-through.

The stem's first conv is a plain 7x7/2 (the paper lists a depth-multiplier-8 separable one; the
widely used Caffe-trained BN-Inception, and pretrainedmodels' ``bninception`` ported from it, use
a plain conv). Convs have no bias (BatchNorm follows each), BatchNorm eps 1e-5.

Key names: ``conv1``, ``conv2_reduce``, ``conv2``, ``inception3a``…``inception5b``, ``fc``;
each block has ``branch1`` (1x1), ``branch2`` (1x1 → 3x3), ``branch3`` (1x1 → 3x3 → 3x3),
``branch4`` (pool → 1x1 projection) as ``nn.Sequential`` of ``BasicConv2d`` (``conv``/``bn``).

Parameters: 11,285,224, computed from the table below (no published exact figure was found to
compare with). The table matches the layer shapes of pretrainedmodels' ``bninception``
(Cadene/pretrained-models.pytorch, checked conv by conv), whose Caffe-style convs carry a bias
each: one parameter more per conv output channel (10,016), 11,295,240 there, the "11.3M" quoted.
Its stride-2 max-pools use ceil mode without padding; ours pad 1 (same 14/7 grids at 224, and odd
sizes stay aligned with the stride-2 convs), so border values of those pools differ.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import BasicConv2d
from .registry import register_model

# name: (in, 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool, pool projection, stride);
# 1x1 = 0: no such branch; projection 0 with stride 2: the max-pool passes its input through.
BLOCKS: list[tuple[str, tuple[int, int, int, int, int, int, str, int, int]]] = [
    ("3a", (192, 64, 64, 64, 64, 96, "avg", 32, 1)),
    ("3b", (256, 64, 64, 96, 64, 96, "avg", 64, 1)),
    ("3c", (320, 0, 128, 160, 64, 96, "max", 0, 2)),
    ("4a", (576, 224, 64, 96, 96, 128, "avg", 128, 1)),
    ("4b", (576, 192, 96, 128, 96, 128, "avg", 128, 1)),
    ("4c", (576, 160, 128, 160, 128, 160, "avg", 128, 1)),
    ("4d", (608, 96, 128, 192, 160, 192, "avg", 128, 1)),
    ("4e", (608, 0, 128, 192, 192, 256, "max", 0, 2)),
    ("5a", (1056, 352, 192, 320, 160, 224, "avg", 128, 1)),
    ("5b", (1024, 352, 192, 320, 192, 224, "max", 128, 1)),
]


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1) -> BasicConv2d:
    return BasicConv2d(cin, cout, k, stride=stride, padding=k // 2, eps=1e-5)


class BNInceptionBlock(nn.Module):
    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, d3r: int, d3: int, pool: str, proj: int,
                 stride: int):
        super().__init__()
        self.branch1 = _conv(in_ch, c1) if c1 else None
        self.branch2 = nn.Sequential(_conv(in_ch, c3r), _conv(c3r, c3, 3, stride))
        self.branch3 = nn.Sequential(_conv(in_ch, d3r), _conv(d3r, d3, 3), _conv(d3, d3, 3, stride))
        pool_layer = (nn.AvgPool2d(3, 1, 1, count_include_pad=True) if pool == "avg"
                      else nn.MaxPool2d(3, stride, 1))
        self.branch4 = nn.Sequential(pool_layer, _conv(in_ch, proj)) if proj else nn.Sequential(pool_layer)
        self.out_channels = c1 + c3 + d3 + (proj or in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.branch2(x), self.branch3(x), self.branch4(x)]
        if self.branch1 is not None:
            out.insert(0, self.branch1(x))
        return torch.cat(out, 1)


class BNInception(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        self.conv1 = _conv(3, 64, 7, 2)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2_reduce = _conv(64, 64)
        self.conv2 = _conv(64, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, cfg in BLOCKS:
            block = BNInceptionBlock(*cfg)
            self.add_module(f"inception{name}", block)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(block.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool2(self.conv2(self.conv2_reduce(self.maxpool1(self.conv1(x)))))
        for name, _ in BLOCKS:
            x = getattr(self, f"inception{name}")(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


@register_model("bn_inception", params=11_285_224,
                paper="Ioffe & Szegedy 2015, Batch Normalization: Accelerating Deep Network Training by "
                      "Reducing Internal Covariate Shift")
def bn_inception(num_classes: int = 1000) -> nn.Module:
    return BNInception(num_classes)
