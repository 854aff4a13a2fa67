"""User models: ``path/to/file.py:factory`` or ``package.module:factory``."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import UsageError
from ..specs import InputSpec, Preprocess
from .registry import ModelSpec


def is_user_ref(name: str) -> bool:
    return ":" in name


def load_user_spec(ref: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    """A ModelSpec for a user factory; the input shape defaults to 1x3x224x224."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr.isidentifier():
        raise UsageError(f"bad model reference '{ref}'", hint="use path/to/file.py:factory or package.module:factory")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"model file not found: {path}")
        mod_name = f"edgekit_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"cannot import module '{target}': {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"'{attr}' is not a callable in {target}")
    shape = tuple(input_shape or (1, 3, 224, 224))
    size = shape[-1]
    return ModelSpec(name=attr, builder=lambda **kw: factory(), family="user",
                     input=InputSpec(shape=(1, *shape[1:])),
                     preprocess=Preprocess(resize=int(round(size / 0.875)), crop=size, channels=shape[1],
                                           mean=(0.485, 0.456, 0.406)[: shape[1]] if shape[1] == 3 else (0.5,) * shape[1],
                                           std=(0.229, 0.224, 0.225)[: shape[1]] if shape[1] == 3 else (0.5,) * shape[1]),
                     num_classes=0, paper=f"user model {ref}")
