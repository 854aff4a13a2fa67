"""Imports every family module so its ``@register_model`` builders are registered."""
from . import (  # noqa: F401
    alexnet,
    densenet,
    efficientnet,
    efficientnet_lite,
    efficientnet_v2,
    googlenet,
    inception,
    lenet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    nin,
    resnet,
    shufflenet_v1,
    shufflenet_v2,
    vgg,
)
