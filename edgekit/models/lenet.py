"""LeNet-5 (LeCun et al. 1998), the 32x32 grayscale digit classifier.

The modern reading of the paper: C3 fully connected to S2 and parameter-free average
subsampling, tanh activations. Parameters (61,706)::

    conv 1→6,  5x5:   1*6*25 + 6    =    156
    conv 6→16, 5x5:   6*16*25 + 16  =  2,416
    fc   400→120:     400*120 + 120 = 48,120
    fc   120→84:      120*84 + 84   = 10,164
    fc   84→10:       84*10 + 10    =    850
"""
from __future__ import annotations

import torch
from torch import nn

from ..specs import Preprocess
from .registry import register_alias, register_model


class LeNet5(nn.Module):
    """``features`` (conv-pool-conv-pool) then ``classifier`` (fc120-fc84-fc); PyTorch default init."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),   # 32 → 28
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),      # 28 → 14
            nn.Conv2d(6, 16, kernel_size=5),            # 14 → 10
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),      # 10 → 5
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("lenet", params=61_706, input_size=32, channels=1, num_classes=10,
                preprocess=Preprocess(resize=32, crop=32, mean=(0.5,), std=(0.5,), channels=1),
                paper="LeCun et al. 1998, Gradient-Based Learning Applied to Document Recognition")
def lenet5(num_classes: int = 10) -> nn.Module:
    return LeNet5(num_classes)


register_alias("lenet", "lenet5")
