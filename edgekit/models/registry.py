"""The model zoo's registry: register, look up, list with wildcards, resolve aliases.

A :class:`ModelSpec` carries everything export and calibration need besides the
network itself: input spec, preprocessing, family, the published parameter count
(a test oracle), per-precision tolerance overrides and the source of pretrained
weights, if any ship in a package.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UnknownModelError, UsageError
from ..specs import InputSpec, Preprocess


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]
    family: str
    input: InputSpec = InputSpec()
    preprocess: Preprocess = Preprocess()
    num_classes: int = 1000
    params: int | None = None          # published parameter count of the deployable (eval-mode) network
    aux_params: int = 0                # auxiliary training heads the module also holds (GoogLeNet, Inception-v3)
    paper: str = ""
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)  # {"fp16": {"cosine": 0.998}}
    pretrained: str | None = None      # "module:function" returning a state dict, if weights ship in a package
    focus: bool = False                # one of the edge focus models (MobileNet/ShuffleNet/EfficientNet)

    @property
    def input_size(self) -> int:
        return self.input.shape[-1]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "params": self.params, "aux_params": self.aux_params,
                "input": list(self.input.shape), "preprocess": self.preprocess.to_dict(),
                "num_classes": self.num_classes, "paper": self.paper, "focus": self.focus}


_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(family: str, *, params: int | None = None, input_size: int = 224,
                   channels: int = 3, preprocess: Preprocess | None = None, paper: str = "",
                   tolerance: dict[str, dict[str, float]] | None = None, pretrained: str | None = None,
                   focus: bool = False, num_classes: int = 1000, name: str | None = None, aux_params: int = 0):
    """Decorator for a builder ``fn(num_classes=1000) -> nn.Module``. Duplicates raise."""

    def deco(fn: Callable[..., Any]):
        key = name or fn.__name__
        if key in _MODELS or key in _ALIASES:
            raise ValueError(f"model '{key}' is already registered")
        pre = preprocess or Preprocess(resize=int(round(input_size / 0.875)), crop=input_size, channels=channels)
        _MODELS[key] = ModelSpec(name=key, builder=fn, family=family,
                                 input=InputSpec(shape=(1, channels, input_size, input_size)),
                                 preprocess=pre, num_classes=num_classes, params=params, aux_params=aux_params, paper=paper,
                                 tolerance=tolerance or {}, pretrained=pretrained, focus=focus)
        return fn

    return deco


def register_alias(alias: str, target: str) -> None:
    """A family name that resolves to its default variant (``mobilenet_v3`` → ``mobilenet_v3_large``)."""
    if alias in _MODELS or alias in _ALIASES:
        raise ValueError(f"alias '{alias}' is already registered")
    _ALIASES[alias] = target


def _ensure_loaded() -> None:
    from . import zoo  # noqa: F401  (registers every family)


def resolve_name(name: str) -> tuple[str, str | None]:
    """(canonical name, alias it came from or None); raises UnknownModelError with suggestions."""
    _ensure_loaded()
    if name in _MODELS:
        return name, None
    if name in _ALIASES:
        return _ALIASES[name], name
    raise UnknownModelError(name, [*_MODELS, *_ALIASES])


def get_spec(name: str) -> ModelSpec:
    return _MODELS[resolve_name(name)[0]]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard (``"mobilenet*"``), sorted."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def list_specs(pattern: str = "*") -> list[ModelSpec]:
    return [_MODELS[n] for n in list_models(pattern)]


def aliases() -> dict[str, str]:
    _ensure_loaded()
    return dict(_ALIASES)


def check_input_shape(spec: ModelSpec, shape: tuple[int, ...]) -> None:
    if shape[1] != spec.input.shape[1]:
        raise UsageError(f"{spec.name} takes {spec.input.shape[1]} input channels, --input-shape gives {shape[1]}")
