"""EfficientNetV2-S, -M and -L (Tan & Le 2021, arXiv:2104.00298).

The early stages use Fused-MBConv (one kxk conv does the expansion and the spatial
mixing, then a 1x1 projection; no SE), the later ones MBConv with SE. BatchNorm eps
1e-3, SiLU, head 1280 channels. Module layout and state-dict keys as torchvision's
``efficientnet_v2_{s,m,l}``: ``features.{s}.{n}.block.{j}``, ``classifier.1``; 21,458,488 /
54,139,356 / 118,515,272 parameters. Preprocessing as torchvision's eval transforms: S resize 384,
crop 384, bilinear; M 480/480 bilinear; L 480/480 bicubic with mean = std = 0.5 (its weights
were ported from TensorFlow's automl/efficientnetv2).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..specs import Preprocess
from .efficientnet import BlockStyle, EfficientNet, MBConvConfig, StochasticDepth
from .registry import register_alias, register_model


@dataclass
class FusedMBConvConfig(MBConvConfig):
    """One stage of Fused-MBConv blocks (same fields as :class:`MBConvConfig`)."""

    def block(self, sd_prob: float, style: BlockStyle) -> nn.Module:
        return FusedMBConv(self, sd_prob, style)


class FusedMBConv(nn.Module):
    def __init__(self, cnf: MBConvConfig, sd_prob: float, style: BlockStyle):
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"FusedMBConv stride must be 1 or 2, got {cnf.stride}")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = MBConvConfig.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        conv = partial(style.conv, norm=style.norm, act=style.act)
        if expanded != cnf.input_channels:
            layers = [conv(cnf.input_channels, expanded, cnf.kernel, stride=cnf.stride),
                      conv(expanded, cnf.out_channels, 1, act=None)]
        else:
            layers = [conv(cnf.input_channels, cnf.out_channels, cnf.kernel, stride=cnf.stride)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


# Columns: expand ratio, kernel, stride, input channels, output channels, repeats (Table 4 of the paper).
EFFICIENTNET_V2_S = [
    FusedMBConvConfig(1, 3, 1, 24, 24, 2),
    FusedMBConvConfig(4, 3, 2, 24, 48, 4),
    FusedMBConvConfig(4, 3, 2, 48, 64, 4),
    MBConvConfig(4, 3, 2, 64, 128, 6),
    MBConvConfig(6, 3, 1, 128, 160, 9),
    MBConvConfig(6, 3, 2, 160, 256, 15),
]


EFFICIENTNET_V2_M = [
    FusedMBConvConfig(1, 3, 1, 24, 24, 3),
    FusedMBConvConfig(4, 3, 2, 24, 48, 5),
    FusedMBConvConfig(4, 3, 2, 48, 80, 5),
    MBConvConfig(4, 3, 2, 80, 160, 7),
    MBConvConfig(6, 3, 1, 160, 176, 14),
    MBConvConfig(6, 3, 2, 176, 304, 18),
    MBConvConfig(6, 3, 1, 304, 512, 5),
]

EFFICIENTNET_V2_L = [
    FusedMBConvConfig(1, 3, 1, 32, 32, 4),
    FusedMBConvConfig(4, 3, 2, 32, 64, 7),
    FusedMBConvConfig(4, 3, 2, 64, 96, 7),
    MBConvConfig(4, 3, 2, 96, 192, 10),
    MBConvConfig(6, 3, 1, 192, 224, 19),
    MBConvConfig(6, 3, 2, 224, 384, 25),
    MBConvConfig(6, 3, 1, 384, 640, 7),
]

_PAPER = "Tan & Le 2021, EfficientNetV2 (arXiv:2104.00298)"
_STYLE = BlockStyle(norm=partial(nn.BatchNorm2d, eps=1e-3))


def _v2(stages: list, dropout: float, num_classes: int) -> EfficientNet:
    return EfficientNet(stages, dropout=dropout, num_classes=num_classes, style=_STYLE, last_channel=1280)


@register_model("efficientnet_v2", params=21_458_488, input_size=384,
                preprocess=Preprocess(resize=384, crop=384, interpolation="bilinear"), focus=True, paper=_PAPER)
def efficientnet_v2_s(num_classes: int = 1000) -> nn.Module:
    return _v2(EFFICIENTNET_V2_S, 0.2, num_classes)


@register_model("efficientnet_v2", params=54_139_356, input_size=480,
                preprocess=Preprocess(resize=480, crop=480, interpolation="bilinear"), focus=True, paper=_PAPER)
def efficientnet_v2_m(num_classes: int = 1000) -> nn.Module:
    return _v2(EFFICIENTNET_V2_M, 0.3, num_classes)


@register_model("efficientnet_v2", params=118_515_272, input_size=480,
                preprocess=Preprocess(resize=480, crop=480, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
                focus=True, paper=_PAPER)
def efficientnet_v2_l(num_classes: int = 1000) -> nn.Module:
    return _v2(EFFICIENTNET_V2_L, 0.4, num_classes)


register_alias("efficientnet_v2", "efficientnet_v2_s")
