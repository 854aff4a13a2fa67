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


MAX_DIM = 1 << 20          # a dimension above a million is a typo, not an image
MAX_SAMPLES = 1_000_000    # parity/calibration samples; memory is checked separately (edgekit.resources)
MAX_GUARD_SECONDS = 600.0  # seconds a latency guard times each runner (--guard-seconds)
TOLERANCE_KEYS = ("max_abs", "cosine", "sqnr_db", "top1")
# metric -> (lowest, highest) accepted value; every value must also be finite
TOLERANCE_RANGES = {"max_abs": (0.0, float("inf")), "cosine": (-1.0, 1.0), "sqnr_db": (-1e3, 1e3),
                    "top1": (0.0, 1.0)}


def parse_shape(text: str) -> tuple[int, ...]:
    """``'1x3x224x224'`` (or ``1,3,224,224``) → ``(1, 3, 224, 224)``; clear error otherwise."""
    text = str(text)
    parts = text.strip().lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p.strip()) for p in parts if p.strip().isascii())
        if len(shape) != len(parts):
            raise ValueError
    except ValueError:
        raise UsageError(f"bad input shape '{_show(text)}': expected integers like 1x3x224x224") from None
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise UsageError(f"bad input shape '{_show(text)}': expected 4 positive dimensions NxCxHxW, e.g. 1x3x224x224")
    if any(d > MAX_DIM for d in shape):
        raise UsageError(f"bad input shape '{_show(text)}': a dimension above {MAX_DIM} is not an image",
                         hint="e.g. --input-shape 1x3x224x224")
    return shape


def _show(text: str, limit: int = 60) -> str:
    """User text for a one-line message: printable, short."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit] + "..."


def int_option(flag: str, lo: int = 1, hi: int | None = None):
    """An argparse ``type`` for an integer option in [lo, hi]; a bad value is a UsageError
    (one line, exit 2) naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise UsageError(f"{flag} expects an integer, got '{_show(text)}'") from None
        return check_int(flag, value, lo, hi)

    parse.__name__ = flag.lstrip("-").replace("-", "_")
    return parse


def check_int(flag: str, value: int, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (any integral type, numpy's included; not bool or float)."""
    import operator

    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise UsageError(f"{flag} expects an integer, got {_show(repr(value))}") from None
    if value < lo:
        raise UsageError(f"{flag} must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise UsageError(f"{flag} must be at most {hi}, got {value}")
    return value


def float_option(flag: str, lo: float = 0.0, hi: float = float("inf"), lo_open: bool = False):
    """An argparse ``type`` for a finite float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise UsageError(f"{flag} expects a number, got '{_show(text)}'") from None
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
        if value < lo or (lo_open and value == lo) or value > hi:
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise UsageError(f"{flag} must be {low}" + (f" and <= {hi:g}" if hi != float("inf") else "")
                             + f", got {value:g}")
        return value

    parse.__name__ = flag.lstrip("-").replace("-", "_")
    return parse


def guard_seconds_option(name: str = "--guard-seconds"):
    """The parser of a latency guard's seconds per runner, in (0, MAX_GUARD_SECONDS]: the flag's,
    the API's and ``$EDGEKIT_GUARD_SECONDS``' (``name`` is what an error names)."""
    return float_option(name, 0.0, MAX_GUARD_SECONDS, lo_open=True)


def check_tolerance(key: str, value: object) -> float:
    """One parity threshold, validated: a known metric, a finite number in the metric's range."""
    import math

    if key not in TOLERANCE_KEYS:
        raise UsageError(f"unknown tolerance '{_show(key)}'", hint=f"use {', '.join(TOLERANCE_KEYS)}")
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        raise UsageError(f"tolerance {key}: '{_show(value)}' is not a number") from None
    lo, hi = TOLERANCE_RANGES[key]
    span = f"{key} takes a finite number >= {lo:g}" if hi == float("inf") else f"{key} takes {lo:g} to {hi:g}"
    if not math.isfinite(number):
        raise UsageError(f"tolerance {key}={number} is not a finite number", hint=span)
    if not lo <= number <= hi:
        raise UsageError(f"tolerance {key}={number:g} is out of range", hint=span)
    return number


def parse_tolerances(items: list[str]) -> dict[str, float]:
    """``['cosine=0.99', 'top1=0.9']`` → ``{'cosine': 0.99, 'top1': 0.9}`` (``--tol``, repeatable)."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"--tol {_show(item)}: expected METRIC=VALUE", hint=f"e.g. --tol cosine=0.999; "
                             f"metrics: {', '.join(TOLERANCE_KEYS)}")
        out[key] = check_tolerance(key, value.strip())
    return out


def check_tolerances(tol: dict[str, object] | None) -> dict[str, float]:
    """A tolerance dict from the API or a manifest, validated like ``--tol``."""
    if tol is None:
        return {}
    if not isinstance(tol, dict):
        raise UsageError(f"tolerance must be a mapping of metric to number, got {type(tol).__name__}")
    return {k: check_tolerance(str(k), v) for k, v in tol.items()}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'", hint=f"choose one of {', '.join(PRECISIONS)}")
    return precision
