"""ShuffleNet (v1) (Zhang et al. 2017, arXiv:1707.01083), 1.0x, g=3, 224x224.

A unit is a bottleneck: 1x1 group conv → BN → ReLU → channel shuffle → 3x3
depthwise (stride s) → BN → 1x1 group conv → BN. Stride 1: added to the input;
stride 2: concatenated with a 3x3 stride-2 average pool of the input, so the
residual branch produces ``out - in`` channels. ReLU after the add/concat. The
bottleneck is a quarter of the unit's output width. As in the paper, the first 1x1
conv of stage 2 is not grouped (its 24 input channels are too few), and so needs no
shuffle after it. Table 1, g=3: conv1 24 channels, stages 240/480/960 with 4/8/4
units, global pool, FC to 1000.

Parameter count: conv weights (no conv bias; ``a*b/3`` is a 1x1 conv with 3 groups),
BN weight + bias (2 per channel), FC weight + bias::

    conv1            3*24*9 + 2*24                                           =       696
    stage2 unit 1    24*60 + 120 + 60*9 + 120 + 60*216/3 + 432               =     6,972
    stage2 units 2-4 3 x (240*60/3 + 120 + 60*9 + 120 + 60*240/3 + 480)      =    32,580
    stage3 unit 1    240*120/3 + 240 + 120*9 + 240 + 120*240/3 + 480         =    21,240
    stage3 units 2-8 7 x (480*120/3 + 240 + 120*9 + 240 + 120*480/3 + 960)   =   286,440
    stage4 unit 1    480*240/3 + 480 + 240*9 + 480 + 240*480/3 + 960         =    80,880
    stage4 units 2-4 3 x (960*240/3 + 480 + 240*9 + 480 + 240*960/3 + 1920)  =   475,920
    fc               960*1000 + 1000                                         =   961,000
    total                                                                    = 1,865,728

(the paper's complexity table counts FLOPs, not parameters; "about 1.87M" is the
figure usually quoted for this model with its FC layer). Layout follows
torchvision's ShuffleNetV2: ``conv1``, ``stage{2,3,4}.{n}``, ``fc``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .layers import ConvNormAct, channel_shuffle, init_weights
from .registry import register_alias, register_model


@dataclass(frozen=True)
class ShuffleNetV1Config:
    groups: int
    stage_repeats: tuple[int, int, int]
    stage_channels: tuple[int, int, int, int]   # conv1, stage2, stage3, stage4


SHUFFLENET_V1_G3 = ShuffleNetV1Config(groups=3, stage_repeats=(4, 8, 4), stage_channels=(24, 240, 480, 960))


class ShuffleUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, group_first: bool = True):
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        self.first_groups = groups if group_first else 1
        self.gconv1 = ConvNormAct(in_ch, mid, 1, groups=self.first_groups)
        self.dwconv = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, act=None)
        self.gconv2 = ConvNormAct(mid, branch_out, 1, groups=groups, act=None)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gconv1(x)
        if self.first_groups > 1:
            out = channel_shuffle(out, self.first_groups)
        out = self.gconv2(self.dwconv(out))
        if self.stride == 2:
            return F.relu(torch.cat((self.shortcut(x), out), dim=1))
        return F.relu(x + out)


class ShuffleNetV1(nn.Module):
    def __init__(self, cfg: ShuffleNetV1Config = SHUFFLENET_V1_G3, num_classes: int = 1000):
        super().__init__()
        ch = cfg.stage_channels
        self.conv1 = ConvNormAct(3, ch[0], 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = ch[0]
        for i, (name, repeats, out_ch) in enumerate(zip(("stage2", "stage3", "stage4"), cfg.stage_repeats, ch[1:])):
            units = [ShuffleUnit(in_ch, out_ch, 2, cfg.groups, group_first=i > 0)]
            units += [ShuffleUnit(out_ch, out_ch, 1, cfg.groups) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            in_ch = out_ch
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean([2, 3]))


@register_model("shufflenet_v1", params=1_865_728, focus=True,
                paper="Zhang et al. 2017, ShuffleNet (arXiv:1707.01083)")
def shufflenet_v1_g3(num_classes: int = 1000) -> nn.Module:
    return ShuffleNetV1(SHUFFLENET_V1_G3, num_classes)


register_alias("shufflenet_v1", "shufflenet_v1_g3")
