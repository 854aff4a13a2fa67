"""Plain records shared by every package: inputs, preprocessing, precision."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape[0]`` is the batch; ``dynamic_batch`` marks it symbolic."""

    name: str = "input"
    shape: tuple[int, ...] = (1, 3, 224, 224)
    dtype: str = "float32"
    layout: str = "NCHW"
    dynamic_batch: bool = False

    def with_batch(self, batch: int) -> "InputSpec":
        return replace(self, shape=(batch, *self.shape[1:]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor (torchvision's classic recipe)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def parse_shape(text: str) -> tuple[int, ...]:
    """``'1x3x224x224'`` (or ``1,3,224,224``) → ``(1, 3, 224, 224)``; clear error otherwise."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad input shape '{text}': expected integers like 1x3x224x224") from None
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise UsageError(f"bad input shape '{text}': expected 4 positive dimensions NxCxHxW, e.g. 1x3x224x224")
    return shape


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'", hint=f"choose one of {', '.join(PRECISIONS)}")
    return precision
