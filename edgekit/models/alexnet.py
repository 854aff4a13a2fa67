"""AlexNet (Krizhevsky et al. 2012), the single-tower variant of torchvision ("One weird
trick", Krizhevsky 2014): same module layout and state-dict keys, 61,100,840 parameters."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

# (out_channels, kernel, stride, padding, max-pool after)
CONVS = [
    (64, 11, 4, 2, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
]


class AlexNet(nn.Module):
    """``features`` / ``avgpool`` (6x6) / ``classifier``; PyTorch default init, as torchvision."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch, k, s, p, pool in CONVS:
            layers += [nn.Conv2d(in_ch, out_ch, k, s, p), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("alexnet", params=61_100_840,
                paper="Krizhevsky et al. 2012, ImageNet Classification with Deep CNNs; Krizhevsky 2014")
def alexnet(num_classes: int = 1000) -> nn.Module:
    return AlexNet(num_classes)
