"""Building blocks shared by the zoo, with torchvision's module layout (and so its
state-dict key names): ``ConvNormAct`` is an ``nn.Sequential`` of conv (0), norm (1),
activation (2), like ``torchvision.ops.Conv2dNormActivation``; ``SqueezeExcitation``
has ``fc1``/``fc2`` like ``torchvision.ops.SqueezeExcitation``."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% below ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormAct(nn.Sequential):
    """conv → norm → activation; padding defaults to 'same' for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1,
                 norm: Callable[..., nn.Module] | None = nn.BatchNorm2d,
                 act: Callable[..., nn.Module] | None = nn.ReLU, dilation: int = 1,
                 bias: bool | None = None, inplace: bool | None = True):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm is None
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding,
                                             dilation=dilation, groups=groups, bias=bias)]
        if norm is not None:
            layers.append(norm(out_ch))
        if act is not None:
            layers.append(act() if inplace is None else act(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_ch


class SqueezeExcitation(nn.Module):
    """Channel attention: avgpool → fc1 (1x1 conv) → act → fc2 → gate → scale."""

    def __init__(self, in_ch: int, squeeze_ch: int, act: Callable[..., nn.Module] = nn.ReLU,
                 gate: Callable[..., nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(in_ch, squeeze_ch, 1)
        self.fc2 = nn.Conv2d(squeeze_ch, in_ch, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm → ReLU with named children ``conv``/``bn``: the layout (and key
    names) of torchvision's GoogLeNet and Inception v3 blocks. BatchNorm eps 1e-3 as there."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = 1,
                 stride: int = 1, padding: int | tuple[int, int] = 0, eps: float = 1e-3):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=eps)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def imagenet_to_half_range(x: torch.Tensor) -> torch.Tensor:
    """Re-normalise an ImageNet-normalised RGB batch to ``(x - 0.5) / 0.5`` per channel: the
    ``transform_input=True`` of torchvision's TensorFlow-ported GoogLeNet / Inception v3 weights."""
    mean = x.new_tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = x.new_tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (x * std + mean - 0.5) / 0.5


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def init_weights(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """torchvision's classic init: kaiming-normal convs (fan_out), unit norms, small linears.
    ``linear_std=None`` leaves linear layers at PyTorch's default init (as torchvision's ResNet does)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
