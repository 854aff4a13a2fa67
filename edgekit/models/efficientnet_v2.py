"""EfficientNetV2-S (Tan & Le 2021, arXiv:2104.00298).

The early stages use Fused-MBConv (one kxk conv does the expansion and the spatial
mixing, then a 1x1 projection; no SE), the later ones MBConv with SE. BatchNorm eps
1e-3, SiLU, head 1280 channels. Module layout and state-dict keys as torchvision's
``efficientnet_v2_s``: ``features.{s}.{n}.block.{j}``, ``classifier.1``; 21,458,488
parameters. Preprocessing as torchvision's eval transform: resize 384, crop 384, bilinear.
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


@register_model("efficientnet_v2", params=21_458_488, input_size=384,
                preprocess=Preprocess(resize=384, crop=384, interpolation="bilinear"), focus=True,
                paper="Tan & Le 2021, EfficientNetV2 (arXiv:2104.00298)")
def efficientnet_v2_s(num_classes: int = 1000) -> nn.Module:
    style = BlockStyle(norm=partial(nn.BatchNorm2d, eps=1e-3))
    return EfficientNet(EFFICIENTNET_V2_S, dropout=0.2, num_classes=num_classes, style=style, last_channel=1280)


register_alias("efficientnet_v2", "efficientnet_v2_s")
