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
        except SystemExit as exc:
            raise UsageError(f"your model code called sys.exit({_code(exc)}) while {path} was imported",
                             hint="a model file must define the factory, not run a program") from None
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
    return ModelSpec(name=attr, builder=lambda **kw: call_factory(factory, attr), family="user",
                     input=InputSpec(shape=(1, *shape[1:])),
                     preprocess=Preprocess(resize=int(round(size / 0.875)), crop=size, channels=shape[1],
                                           mean=(0.485, 0.456, 0.406)[: shape[1]] if shape[1] == 3 else (0.5,) * shape[1],
                                           std=(0.229, 0.224, 0.225)[: shape[1]] if shape[1] == 3 else (0.5,) * shape[1]),
                     num_classes=0, paper=f"user model {ref}")


def _code(exc: SystemExit) -> str:
    return repr(exc.code) if isinstance(exc.code, str) else str(exc.code if exc.code is not None else 0)


def blame(exc: BaseException, what: str = "your model") -> UsageError:
    """An exception raised by user code, as a one-line error that names the user's code
    (DESIGN §8: not an edgekit bug)."""
    if isinstance(exc, SystemExit):
        return UsageError(f"{what.replace('your model', 'your model code')} called sys.exit({_code(exc)})",
                          hint="a model must return or raise, not exit the process")
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return UsageError(f"{what} raised {type(exc).__name__}" + (f": {first}" if first else ""),
                      hint="the error is in your model's code; rerun with --debug for its traceback")


def call_factory(factory, name: str):
    """Call a user's factory: exceptions and sys.exit are the user's, and it must return a Module."""
    import torch

    try:
        model = factory()
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - anything from user code is the user's
        raise blame(exc) from exc
    if not isinstance(model, torch.nn.Module):
        kind = type(model).__name__
        raise UsageError(f"your factory '{name}' returned {_article(kind)} {kind}, expected a torch.nn.Module",
                         hint="return the model itself (not a tuple, dict or class): def factory(): return Net()")
    return model


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def build_user_model(spec: ModelSpec, request, console=None):
    """``models.build`` for a user model: anything its factory or its forward pass (BatchNorm
    statistics run one) raises is reported as the user's, edgekit's own errors pass through."""
    from ..errors import EdgekitError
    from .build import build

    try:
        return build(spec, weights=request.weights, pretrained=request.pretrained, console=console)
    except (EdgekitError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise blame(exc) from exc
