"""Network in Network (Lin, Chen & Yan 2014), the ImageNet variant of the Caffe model zoo
as d2l.ai builds it: four mlpconv blocks (a kxk conv then two 1x1 convs, each with ReLU),
max-pools between them, dropout, and a last block with ``num_classes`` channels whose
global average pool *is* the classifier (no fully connected layer).

Parameter count. A block ``c_in → c`` with kernel ``k`` holds
``(c_in*k*k*c + c) + 2*(c*c + c)`` parameters. With ``n`` classes::

    block 1:   3 →  96, k=11:    34,944 + 18,624 =    53,568
    block 2:  96 → 256, k=5:    614,656 + 131,584 =   746,240
    block 3: 256 → 384, k=3:    885,120 + 295,680 = 1,180,800
    block 4: 384 →   n, k=3:  3456n + n + 2(n*n + n) = 2n² + 3459n
    total = 1,980,608 + 2n² + 3459n  →  7,439,608 for n = 1000
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import init_weights
from .registry import register_model

# (out_channels, kernel, stride, padding); out_channels None: the number of classes.
BLOCKS: list[tuple[int | None, int, int, int]] = [
    (96, 11, 4, 0),
    (256, 5, 1, 2),
    (384, 3, 1, 1),
    (None, 3, 1, 1),
]


def mlpconv(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    """kxk conv → ReLU → 1x1 conv → ReLU → 1x1 conv → ReLU (the paper's "micro network")."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 1), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 1), nn.ReLU(inplace=True),
    )


class NiN(nn.Module):
    """``features``: block, pool, block, pool, block, pool, dropout, block; then global average pool."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, (out_ch, k, s, p) in enumerate(BLOCKS):
            last = i == len(BLOCKS) - 1
            if last:
                layers.append(nn.Dropout(dropout))
            out_ch = num_classes if out_ch is None else out_ch
            layers.append(mlpconv(in_ch, out_ch, k, s, p))
            if not last:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


@register_model("nin", params=7_439_608, paper="Lin, Chen & Yan 2014, Network In Network")
def nin(num_classes: int = 1000) -> nn.Module:
    return NiN(num_classes)
