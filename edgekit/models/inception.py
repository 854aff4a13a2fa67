"""Inception v3 (Szegedy et al. 2016) with torchvision's layout and key names (``Conv2d_1a_3x3``…,
``Mixed_5b``…``Mixed_7c``, ``AuxLogits``, ``fc``; every conv a ``BasicConv2d`` with ``conv``/``bn``).

Input 299x299 (resize 342, crop 299). The auxiliary classifier ``AuxLogits`` is part of the
module (torchvision's checkpoint holds it; its published figure 27,161,264 counts it) and runs
only in training mode, where ``forward`` returns ``InceptionOutputs(logits, aux_logits)``; in
eval mode it returns the logits tensor alone. Registered: 23,834,568 deployed parameters
(torchvision with ``aux_logits=False``) plus 3,326,696 in ``AuxLogits`` (``aux_params``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BasicConv2d, imagenet_to_half_range
from .registry import register_alias, register_model


class InceptionOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits: torch.Tensor


def _cat(*branches: torch.Tensor) -> torch.Tensor:
    return torch.cat(branches, 1)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avgpool→1x1."""

    def __init__(self, in_ch: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.branch1x1(x),
                    self.branch5x5_2(self.branch5x5_1(x)),
                    self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                    self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)))


class InceptionB(nn.Module):
    """Grid reduction 35→17: 3x3/2 | 1x1→3x3→3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.branch3x3(x),
                    self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                    F.max_pool2d(x, kernel_size=3, stride=2))


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (1x7 and 7x1), ``c7`` channels inside."""

    def __init__(self, in_ch: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = conv(d7)
        return _cat(self.branch1x1(x), b7, d7,
                    self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)))


class InceptionD(nn.Module):
    """Grid reduction 17→8: 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return _cat(self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2))


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (1x3 and 3x1 side by side)."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return _cat(self.branch1x1(x),
                    self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                    self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
                    self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)))


class InceptionAux(nn.Module):
    """avgpool 5/3 → 1x1 conv (128) → 5x5 conv (768) → global pool → fc."""

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.conv0 = BasicConv2d(in_ch, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Stem: (name, in, out, kernel, stride, padding); "maxpoolN" is a 3x3/2 max-pool.
STEM: list[tuple[str, int, int, int, int, int] | str] = [
    ("Conv2d_1a_3x3", 3, 32, 3, 2, 0),
    ("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
    ("Conv2d_2b_3x3", 32, 64, 3, 1, 1),
    "maxpool1",
    ("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
    ("Conv2d_4a_3x3", 80, 192, 3, 1, 0),
    "maxpool2",
]
# Mixed blocks: (name, block, constructor args); AuxLogits taps the output of Mixed_6e.
MIXED: list[tuple[str, type[nn.Module], tuple[int, ...]]] = [
    ("Mixed_5b", InceptionA, (192, 32)),
    ("Mixed_5c", InceptionA, (256, 64)),
    ("Mixed_5d", InceptionA, (288, 64)),
    ("Mixed_6a", InceptionB, (288,)),
    ("Mixed_6b", InceptionC, (768, 128)),
    ("Mixed_6c", InceptionC, (768, 160)),
    ("Mixed_6d", InceptionC, (768, 160)),
    ("Mixed_6e", InceptionC, (768, 192)),
    ("Mixed_7a", InceptionD, (768,)),
    ("Mixed_7b", InceptionE, (1280,)),
    ("Mixed_7c", InceptionE, (2048,)),
]
AUX_AFTER = "Mixed_6e"


class Inception3(nn.Module):
    """``transform_input=True`` re-normalises ImageNet-normalised input the way torchvision's
    pretrained (TensorFlow-ported) weights expect."""

    aux_heads = ("AuxLogits",)   # training-only: a checkpoint may leave them out (build.absent_aux_heads)

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, transform_input: bool = False):
        super().__init__()
        self.transform_input = transform_input
        self._stem: list[str] = []
        for item in STEM:
            if isinstance(item, str):
                self.add_module(item, nn.MaxPool2d(kernel_size=3, stride=2))
                self._stem.append(item)
            else:
                name, cin, cout, k, s, p = item
                self.add_module(name, BasicConv2d(cin, cout, k, stride=s, padding=p))
                self._stem.append(name)
        for name, block, args in MIXED:
            self.add_module(name, block(*args))
            if name == AUX_AFTER:
                self.AuxLogits = InceptionAux(768, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision: truncated normal (cut at ±2) with std 0.1, except the aux fc (std 0.001).
        # (torchvision also tags AuxLogits.conv1 with std 0.01, but on the wrapper module, which
        # its init loop never visits: that conv gets 0.1 there too.)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = 0.001 if m is self.AuxLogits.fc else 0.1
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionOutputs:
        if self.transform_input:
            x = imagenet_to_half_range(x)
        for name in self._stem:
            x = getattr(self, name)(x)
        aux = None
        for name, _, _ in MIXED:
            x = getattr(self, name)(x)
            if self.training and name == AUX_AFTER:
                aux = self.AuxLogits(x)
        logits = self.fc(torch.flatten(self.dropout(self.avgpool(x)), 1))
        if self.training:
            return InceptionOutputs(logits, aux)
        return logits


# torchvision's init (std 0.1 on the 2048→1000 fc) gives logits of |max| ≈ 27 on a photo; the fp32
# max_abs threshold scales with such peaks (edgekit/compare.py), so no per-model override is needed.
@register_model("inception", params=23_834_568, aux_params=3_326_696, input_size=299,
                paper="Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision")
def inception_v3(num_classes: int = 1000) -> nn.Module:
    return Inception3(num_classes)


register_alias("inception", "inception_v3")
