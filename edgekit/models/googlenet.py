"""GoogLeNet / Inception v1 (Szegedy et al. 2015) with torchvision's layout and key names
(``conv1``, ``inception3a``…``inception5b``, ``aux1``/``aux2``, ``fc``; every conv a
``BasicConv2d`` with ``conv``/``bn``).

Like torchvision, the "5x5" branch uses a 3x3 conv (pytorch/vision#906): kept, because the
parameter count and torchvision's checkpoints depend on it.

The two auxiliary classifiers are part of the module (torchvision's checkpoint holds them)
and run only in training mode, where ``forward`` returns
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``; in eval mode it returns the logits
tensor alone, so the exported graph has one output. Parameters: 6,624,904 deployed
(torchvision's published figure, the registered ``params``) plus 6,379,984 in the aux
heads (``aux_params``; 13,004,888 in the module).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layers import BasicConv2d, imagenet_to_half_range
from .registry import register_model

# name: (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj); a max-pool follows 3b and 4e.
INCEPTIONS: list[tuple[str, tuple[int, int, int, int, int, int, int]]] = [
    ("3a", (192, 64, 96, 128, 16, 32, 32)),
    ("3b", (256, 128, 128, 192, 32, 96, 64)),
    ("4a", (480, 192, 96, 208, 16, 48, 64)),
    ("4b", (512, 160, 112, 224, 24, 64, 64)),
    ("4c", (512, 128, 128, 256, 24, 64, 64)),
    ("4d", (512, 112, 144, 288, 32, 64, 64)),
    ("4e", (528, 256, 160, 320, 32, 128, 128)),
    ("5a", (832, 256, 160, 320, 32, 128, 128)),
    ("5b", (832, 384, 192, 384, 48, 128, 128)),
]
POOL_AFTER = {"3b": ("maxpool3", 3), "4e": ("maxpool4", 2)}   # name, kernel (stride 2, ceil mode)
AUX_AT = {"4a": "aux1", "4d": "aux2"}                         # aux head fed by that block's output


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class Inception(nn.Module):
    """Four parallel branches concatenated on channels."""

    def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(in_ch, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_ch, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_ch, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """avgpool to 4x4 → 1x1 conv (128) → fc 1024 → ReLU → dropout 0.7 → fc."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = BasicConv2d(in_ch, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.avgpool(x)), 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """``transform_input=True`` re-normalises ImageNet-normalised input the way torchvision's
    pretrained (TensorFlow-ported) weights expect."""

    aux_heads = ("aux1", "aux2")   # training-only: a checkpoint may leave them out (build.absent_aux_heads)

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, dropout_aux: float = 0.7,
                 transform_input: bool = False):
        super().__init__()
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, cfg in INCEPTIONS:
            self.add_module(f"inception{name}", Inception(*cfg))
            if name in POOL_AFTER:
                pool, k = POOL_AFTER[name]
                self.add_module(pool, nn.MaxPool2d(k, stride=2, ceil_mode=True))
        self.aux1 = InceptionAux(512, num_classes, dropout_aux)
        self.aux2 = InceptionAux(528, num_classes, dropout_aux)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision: truncated normal (std 0.01, cut at ±2) for conv and linear weights.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        if self.transform_input:
            x = imagenet_to_half_range(x)
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        aux: dict[str, torch.Tensor] = {}
        for name, _ in INCEPTIONS:
            x = getattr(self, f"inception{name}")(x)
            if self.training and name in AUX_AT:
                aux[AUX_AT[name]] = getattr(self, AUX_AT[name])(x)
            if name in POOL_AFTER:
                x = getattr(self, POOL_AFTER[name][0])(x)
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training:
            return GoogLeNetOutputs(logits, aux["aux2"], aux["aux1"])
        return logits


@register_model("googlenet", params=6_624_904, aux_params=6_379_984,
                paper="Szegedy et al. 2015, Going Deeper with Convolutions")
def googlenet(num_classes: int = 1000) -> nn.Module:
    return GoogLeNet(num_classes)
