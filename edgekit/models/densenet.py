"""DenseNet (Huang et al. 2017) with torchvision's layout and key names: ``features`` holds
``conv0``/``norm0``/``relu0``/``pool0``, ``denseblock{1..4}`` of ``denselayer{n}`` (each
``norm1``/``relu1``/``conv1``/``norm2``/``relu2``/``conv2``), ``transition{1..3}``
(``norm``/``relu``/``conv``/``pool``) and ``norm5``; then ``classifier``.

densenet121 has 7,978,856 parameters; densenet161/169/201 are registered too. torchvision's
released checkpoints use legacy key names (``norm.1`` for ``norm1``…); ``--weights`` and
``--pretrained`` rename them (``layouts.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_alias, register_model


@dataclass(frozen=True)
class DenseNetConfig:
    growth_rate: int                            # k: channels each layer adds
    block_config: tuple[int, int, int, int]     # layers per dense block
    num_init_features: int                      # stem channels
    bn_size: int = 4                            # bottleneck width = bn_size * k
    drop_rate: float = 0.0                      # dropout after each layer


CONFIGS: dict[str, DenseNetConfig] = {
    "densenet121": DenseNetConfig(32, (6, 12, 24, 16), 64),
    "densenet161": DenseNetConfig(48, (6, 12, 36, 24), 96),
    "densenet169": DenseNetConfig(32, (6, 12, 32, 32), 64),
    "densenet201": DenseNetConfig(32, (6, 12, 48, 32), 64),
}


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) → BN-ReLU-3x3 conv; returns only the new ``growth_rate`` maps."""

    def __init__(self, in_ch: int, growth_rate: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.dropout(self.conv2(self.relu2(self.norm2(x))))


class DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block input and every earlier layer's output."""

    def __init__(self, num_layers: int, in_ch: int, growth_rate: int, bn_size: int, drop_rate: float):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(in_ch + i * growth_rate, growth_rate, bn_size, drop_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (halves channels) → 2x2 average pool."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, cfg: DenseNetConfig, num_classes: int = 1000):
        super().__init__()
        ch = cfg.num_init_features
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, ch, kernel_size=7, stride=2, padding=3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(ch))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        for i, num_layers in enumerate(cfg.block_config):
            self.features.add_module(f"denseblock{i + 1}",
                                     DenseBlock(num_layers, ch, cfg.growth_rate, cfg.bn_size, cfg.drop_rate))
            ch += num_layers * cfg.growth_rate
            if i != len(cfg.block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(ch, ch // 2))
                ch //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(ch))
        self.classifier = nn.Linear(ch, num_classes)
        # torchvision: kaiming-normal convs (fan_in), unit BatchNorm, zero linear bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def densenet(name: str, num_classes: int = 1000) -> DenseNet:
    """Any configuration in ``CONFIGS``."""
    return DenseNet(CONFIGS[name], num_classes)


# torchvision's published counts
PARAMS = {"densenet121": 7_978_856, "densenet161": 28_681_000, "densenet169": 14_149_480, "densenet201": 20_013_928}
for _name, _params in PARAMS.items():
    register_model("densenet", name=_name, params=_params,
                   paper="Huang et al. 2017, Densely Connected Convolutional Networks")(partial(densenet, _name))

register_alias("densenet", "densenet121")
