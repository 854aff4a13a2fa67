"""ShuffleNetV2 (Ma et al. 2018, arXiv:1807.11164) at widths 0.5x, 1.0x, 1.5x, 2.0x.

A stride-1 unit splits the channels in two, transforms one half (1x1 → 3x3 depthwise
→ 1x1) and concatenates it with the untouched half; a stride-2 unit runs both halves
on the whole input (branch1: depthwise stride 2 → 1x1). A channel shuffle with two
groups follows every unit. Module layout and state-dict keys as torchvision's:
``conv1``, ``stage{2,3,4}.{n}.branch{1,2}``, ``conv5``, ``fc``; PyTorch's default
initialisation, as torchvision. Parameters: 1,366,792 / 2,278,604 / 3,503,624 /
7,393,996.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import channel_shuffle
from .registry import register_alias, register_model


@dataclass(frozen=True)
class ShuffleNetV2Config:
    """Table 5 of the paper: units per stage and output channels of conv1, stages 2-4, conv5."""

    stage_repeats: tuple[int, int, int]
    stage_channels: tuple[int, int, int, int, int]


SHUFFLENET_V2 = {
    "x0_5": ShuffleNetV2Config((4, 8, 4), (24, 48, 96, 192, 1024)),
    "x1_0": ShuffleNetV2Config((4, 8, 4), (24, 116, 232, 464, 1024)),
    "x1_5": ShuffleNetV2Config((4, 8, 4), (24, 176, 352, 704, 1024)),
    "x2_0": ShuffleNetV2Config((4, 8, 4), (24, 244, 488, 976, 2048)),
}


def _depthwise(ch: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, 3, stride, 1, groups=ch, bias=False)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleNetV2 unit stride must be 1 or 2, got {stride}")
        branch = out_ch // 2
        if stride == 1 and in_ch != 2 * branch:
            raise ValueError(f"a stride-1 ShuffleNetV2 unit keeps its width: in {in_ch} != out {out_ch}")
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_ch, stride),
                nn.BatchNorm2d(in_ch),
                nn.Conv2d(in_ch, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_ch if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            _depthwise(branch, stride),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, cfg: ShuffleNetV2Config, num_classes: int = 1000):
        super().__init__()
        ch = cfg.stage_channels
        self.conv1 = nn.Sequential(nn.Conv2d(3, ch[0], 3, 2, 1, bias=False), nn.BatchNorm2d(ch[0]),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = ch[0]
        for name, repeats, out_ch in zip(("stage2", "stage3", "stage4"), cfg.stage_repeats, ch[1:4]):
            units = [InvertedResidual(in_ch, out_ch, 2)]
            units += [InvertedResidual(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            in_ch = out_ch
        self.conv5 = nn.Sequential(nn.Conv2d(in_ch, ch[4], 1, bias=False), nn.BatchNorm2d(ch[4]),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(ch[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)


_PAPER = "Ma et al. 2018, ShuffleNet V2 (arXiv:1807.11164)"


@register_model("shufflenet_v2", params=1_366_792, focus=True, paper=_PAPER)
def shufflenet_v2_x0_5(num_classes: int = 1000) -> nn.Module:
    return ShuffleNetV2(SHUFFLENET_V2["x0_5"], num_classes)


@register_model("shufflenet_v2", params=2_278_604, focus=True, paper=_PAPER)
def shufflenet_v2_x1_0(num_classes: int = 1000) -> nn.Module:
    return ShuffleNetV2(SHUFFLENET_V2["x1_0"], num_classes)


@register_model("shufflenet_v2", params=3_503_624, focus=True, paper=_PAPER)
def shufflenet_v2_x1_5(num_classes: int = 1000) -> nn.Module:
    return ShuffleNetV2(SHUFFLENET_V2["x1_5"], num_classes)


@register_model("shufflenet_v2", params=7_393_996, focus=True, paper=_PAPER)
def shufflenet_v2_x2_0(num_classes: int = 1000) -> nn.Module:
    return ShuffleNetV2(SHUFFLENET_V2["x2_0"], num_classes)


register_alias("shufflenet_v2", "shufflenet_v2_x1_0")
register_alias("shufflenet", "shufflenet_v2_x1_0")
