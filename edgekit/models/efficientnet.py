"""EfficientNet B0-B3 (Tan & Le 2019, arXiv:1905.11946): the building blocks and network
shared by every EfficientNet in the zoo (V2 in ``efficientnet_v2``, Lite in
``efficientnet_lite``).

The architecture is a table of stages (:class:`MBConvConfig`: expand ratio, kernel,
stride, in/out channels, repeats); width and depth multipliers scale it (channels
rounded to multiples of 8, repeats rounded up). An MBConv block is 1x1 expansion →
kxk depthwise → squeeze-and-excitation (squeeze to in/4, SiLU, sigmoid gate) → linear
1x1 projection, with stochastic depth on the residual branch in training (identity
in eval mode, so exports see a plain add). Module layout and state-dict keys as
torchvision's: ``features.{s}.{n}.block.{j}``, ``classifier.1``.

Preprocessing follows torchvision's eval transforms for its IMAGENET1K_V1 weights
(bicubic): B0 256→224, B1 256→240, B2 288→288, B3 320→300.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..specs import Preprocess
from .layers import ConvNormAct, SqueezeExcitation, make_divisible
from .registry import register_alias, register_model


@dataclass
class MBConvConfig:
    """One stage of MBConv blocks (Table 1 of the paper), already scaled."""

    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int

    @staticmethod
    def adjust_channels(channels: float, width_mult: float = 1.0) -> int:
        return make_divisible(channels * width_mult, 8)

    @classmethod
    def scaled(cls, expand_ratio: float, kernel: int, stride: int, input_channels: int, out_channels: int,
               num_layers: int, width_mult: float = 1.0, depth_mult: float = 1.0) -> "MBConvConfig":
        return cls(expand_ratio, kernel, stride, cls.adjust_channels(input_channels, width_mult),
                   cls.adjust_channels(out_channels, width_mult), int(math.ceil(num_layers * depth_mult)))

    def block(self, sd_prob: float, style: "BlockStyle") -> nn.Module:
        return MBConv(self, sd_prob, style)


@dataclass(frozen=True)
class BlockStyle:
    """What differs between EfficientNet flavours besides the table."""

    norm: Callable[..., nn.Module] = nn.BatchNorm2d
    act: Callable[..., nn.Module] = nn.SiLU
    se: bool = True
    conv: Callable[..., nn.Module] = ConvNormAct   # Lite swaps in TF-"SAME"-padded stride-2 convs


def efficientnet_b_stages(width_mult: float, depth_mult: float) -> list[MBConvConfig]:
    """The B0 table scaled by width and depth."""
    stage = partial(MBConvConfig.scaled, width_mult=width_mult, depth_mult=depth_mult)
    # Columns: expand ratio, kernel, stride, input channels, output channels, repeats.
    return [
        stage(1, 3, 1, 32, 16, 1),
        stage(6, 3, 2, 16, 24, 2),
        stage(6, 5, 2, 24, 40, 2),
        stage(6, 3, 2, 40, 80, 3),
        stage(6, 5, 1, 80, 112, 3),
        stage(6, 5, 2, 112, 192, 4),
        stage(6, 3, 1, 192, 320, 1),
    ]


class StochasticDepth(nn.Module):
    """Drops the whole residual branch of a sample with probability ``p`` while training
    (survivors scaled by 1/(1-p)); identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * noise.div_(keep)


class MBConv(nn.Module):
    def __init__(self, cnf: MBConvConfig, sd_prob: float, style: BlockStyle):
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {cnf.stride}")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = MBConvConfig.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        conv = partial(style.conv, norm=style.norm, act=style.act)
        layers: list[nn.Module] = []
        if expanded != cnf.input_channels:
            layers.append(conv(cnf.input_channels, expanded, 1))
        layers.append(conv(expanded, expanded, cnf.kernel, stride=cnf.stride, groups=expanded))
        if style.se:
            layers.append(SqueezeExcitation(expanded, max(1, cnf.input_channels // 4), act=nn.SiLU))
        layers.append(conv(expanded, cnf.out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNet(nn.Module):
    """Stem (3x3 stride 2) → stages of blocks → 1x1 head → pool → dropout → linear.

    ``stages`` may mix MBConv and Fused-MBConv configs (anything with ``block(sd_prob,
    style)``); the stochastic-depth probability grows linearly with the block index.
    """

    def __init__(self, stages: list, dropout: float, stochastic_depth_prob: float = 0.2,
                 num_classes: int = 1000, style: BlockStyle = BlockStyle(), last_channel: int | None = None):
        super().__init__()
        conv = partial(style.conv, norm=style.norm, act=style.act)
        layers: list[nn.Module] = [conv(3, stages[0].input_channels, 3, stride=2)]
        total = sum(cnf.num_layers for cnf in stages)
        block_id = 0
        for cnf in stages:
            blocks: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if blocks:
                    block_cnf.input_channels, block_cnf.stride = block_cnf.out_channels, 1
                blocks.append(block_cnf.block(stochastic_depth_prob * block_id / total, style))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        last_in = stages[-1].out_channels
        last_out = last_channel or 4 * last_in
        layers.append(conv(last_in, last_out, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(last_out, num_classes))
        init_efficientnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def init_efficientnet(model: nn.Module) -> None:
    """torchvision's EfficientNet init: kaiming-normal convs (fan_out), unit norms,
    linears uniform in ±1/sqrt(out_features)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


_PAPER = "Tan & Le 2019, EfficientNet (arXiv:1905.11946)"


def _bicubic(resize: int, crop: int) -> Preprocess:
    return Preprocess(resize=resize, crop=crop, interpolation="bicubic")


def _efficientnet_b(width_mult: float, depth_mult: float, dropout: float, num_classes: int,
                    style: BlockStyle = BlockStyle()) -> EfficientNet:
    return EfficientNet(efficientnet_b_stages(width_mult, depth_mult), dropout, num_classes=num_classes, style=style)


# B5-B7: torchvision's checkpoints were ported from lukemelas' EfficientNet-PyTorch (TensorFlow's
# batch norm), so torchvision builds them with BatchNorm eps 1e-3, momentum 0.01 (B0-B4: defaults)
_TF_NORM = BlockStyle(norm=partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01))


@register_model("efficientnet", params=5_288_548, input_size=224, preprocess=_bicubic(256, 224),
                focus=True, paper=_PAPER)
def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.0, 1.0, 0.2, num_classes)


@register_model("efficientnet", params=7_794_184, input_size=240, preprocess=_bicubic(256, 240),
                focus=True, paper=_PAPER)
def efficientnet_b1(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.0, 1.1, 0.2, num_classes)


@register_model("efficientnet", params=9_109_994, input_size=288, preprocess=_bicubic(288, 288),
                focus=True, paper=_PAPER)
def efficientnet_b2(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.1, 1.2, 0.3, num_classes)


@register_model("efficientnet", params=12_233_232, input_size=300, preprocess=_bicubic(320, 300),
                focus=True, paper=_PAPER)
def efficientnet_b3(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.2, 1.4, 0.3, num_classes)


@register_model("efficientnet", params=19_341_616, input_size=380, preprocess=_bicubic(384, 380),
                focus=True, paper=_PAPER)
def efficientnet_b4(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.4, 1.8, 0.4, num_classes)


@register_model("efficientnet", params=30_389_784, input_size=456, preprocess=_bicubic(456, 456),
                focus=True, paper=_PAPER)
def efficientnet_b5(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.6, 2.2, 0.4, num_classes, _TF_NORM)


@register_model("efficientnet", params=43_040_704, input_size=528, preprocess=_bicubic(528, 528),
                focus=True, paper=_PAPER)
def efficientnet_b6(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(1.8, 2.6, 0.5, num_classes, _TF_NORM)


@register_model("efficientnet", params=66_347_960, input_size=600, preprocess=_bicubic(600, 600),
                focus=True, paper=_PAPER)
def efficientnet_b7(num_classes: int = 1000) -> nn.Module:
    return _efficientnet_b(2.0, 3.1, 0.5, num_classes, _TF_NORM)


register_alias("efficientnet", "efficientnet_b0")
