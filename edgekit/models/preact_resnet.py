"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks") for
ImageNet: BN → ReLU before every conv inside a block, identity shortcuts (a 1x1 conv, fed the
block's pre-activated input, only where shape changes), and a final BN → ReLU before global
pooling. The stem is a bare 7x7/2 conv and max-pool: the first block's BN-ReLU activates it
(the layout of timm's ``ResNetV2`` without its standardised convs).

Key names follow torchvision's ResNet where the parts match: ``conv1``, ``layer1``…``layer4``
of blocks with ``bn{1,2,3}``/``conv{1,2,3}`` (``bnK`` now *precedes* ``convK`` and sees its
input channels) and ``downsample`` (a lone conv), then ``bn_final`` and ``fc``. Bottlenecks
stride on the 3x3 conv, as torchvision's.

Parameters, derived from torchvision's resnet18 / resnet50 (11,689,512 / 25,557,032): drop the
stem BN (-128) and the downsample BNs (-2C for each), move each block's BNs from output to
input channels, add the final BN (+1024 / +4096); no published figure was found to compare with,
so these counts are the computed ones (timm's ``resnetv2_50``, the same layout, is quoted as 25.5M):
preact_resnet18 11,687,720 (-1,792); preact_resnet50 25,549,352 (-7,680).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import init_weights
from .registry import register_alias, register_model
from .resnet import conv1x1, conv3x3


class PreActBasicBlock(nn.Module):
    """BN-ReLU-3x3 → BN-ReLU-3x3, for preact_resnet18."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv1x1(inplanes, planes, stride) if stride != 1 or inplanes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1 → BN-ReLU-3x3 (stride) → BN-ReLU-1x1 (x4), for preact_resnet50."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv1x1(inplanes, out_ch, stride) if stride != 1 or inplanes != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


CONFIGS: dict[str, tuple[type[PreActBasicBlock] | type[PreActBottleneck], tuple[int, int, int, int]]] = {
    "preact_resnet18": (PreActBasicBlock, (2, 2, 2, 2)),
    "preact_resnet50": (PreActBottleneck, (3, 4, 6, 3)),
}
STAGE_PLANES = (64, 128, 256, 512)


class PreActResNet(nn.Module):
    def __init__(self, block: type[PreActBasicBlock] | type[PreActBottleneck], layers: tuple[int, ...],
                 num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip(STAGE_PLANES, layers)):
            stage = [block(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.bn_final = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_HE = "He et al. 2016, Identity Mappings in Deep Residual Networks"


@register_model("preact_resnet", params=11_687_720, paper=_HE)
def preact_resnet18(num_classes: int = 1000) -> nn.Module:
    return PreActResNet(*CONFIGS["preact_resnet18"], num_classes=num_classes)


@register_model("preact_resnet", params=25_549_352, paper=_HE)
def preact_resnet50(num_classes: int = 1000) -> nn.Module:
    return PreActResNet(*CONFIGS["preact_resnet50"], num_classes=num_classes)


register_alias("preact_resnet", "preact_resnet50")
