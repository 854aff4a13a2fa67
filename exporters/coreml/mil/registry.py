"""The op table: MIL op type -> NumPy implementation, and the view an op gets of its inputs.

An implementation is a plain function ``fn(call: OpCall) -> array | tuple[array, ...]``.
It computes in float32 (or the integer type it was given); the executor then casts the
result to the output type the program declares, so an FP16 program is rounded to FP16
after every op (see docs/coreml.md, "Precision").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgekit.errors import MilError

if TYPE_CHECKING:  # pragma: no cover
    from .program import Op

OPS: dict[str, Callable[["OpCall"], Any]] = {}
CONST_TIME: set[str] = set()   # ops evaluated once when the program is loaded (constexpr_*)

_MISSING = object()


def op(*names: str, const_time: bool = False):
    """Register an implementation under one or more MIL op types."""

    def deco(fn):
        for n in names:
            if n in OPS:
                raise ValueError(f"MIL op '{n}' registered twice")
            OPS[n] = fn
            if const_time:
                CONST_TIME.add(n)
        return fn

    return deco


class OpCall:
    """One op's inputs, resolved against the current values. ``f32`` caches the float32
    copies of constants (FP16 weights are widened once, not on every inference)."""

    __slots__ = ("op", "env", "consts", "cache")

    def __init__(self, op: "Op", env: dict[str, Any], consts: dict[str, Any] | None = None,
                 cache: dict[str, np.ndarray] | None = None):
        self.op = op
        self.env = env
        self.consts = consts if consts is not None else {}
        self.cache = cache if cache is not None else {}

    # -- raw access ---------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.op.inputs

    def _resolve(self, binding: Any) -> Any:
        if isinstance(binding, str):
            try:
                return self.env[binding]
            except KeyError:
                raise MilError(f"op '{self.op.name}' ({self.op.type}) reads '{binding}', which no earlier op "
                               "defines") from None
        return binding

    def values(self, key: str) -> list[Any]:
        """Every binding of a (variadic) input, e.g. ``concat.values``."""
        return [self._resolve(b) for b in self.op.inputs.get(key, ())]

    def value(self, key: str, default: Any = _MISSING) -> Any:
        bindings = self.op.inputs.get(key)
        if not bindings:
            if default is _MISSING:
                raise MilError(f"op '{self.op.name}' ({self.op.type}) has no input '{key}'")
            return default
        return self._resolve(bindings[0])

    # -- typed access -------------------------------------------------------------
    def f32(self, key: str, default: Any = _MISSING) -> np.ndarray:
        """The input as float32 (constants converted once and cached)."""
        bindings = self.op.inputs.get(key)
        if not bindings:
            if default is _MISSING:
                raise MilError(f"op '{self.op.name}' ({self.op.type}) has no input '{key}'")
            return default
        b = bindings[0]
        if isinstance(b, str) and b in self.cache:
            return self.cache[b]
        v = np.asarray(self._resolve(b))
        out = v if v.dtype == np.float32 else v.astype(np.float32)
        if isinstance(b, str) and b in self.consts:
            self.cache[b] = out
        return out

    def num(self, key: str) -> np.ndarray:
        """Floating inputs as float32, integer / bool inputs unchanged."""
        v = np.asarray(self.value(key))
        return self.f32(key) if v.dtype.kind == "f" else v

    def int(self, key: str, default: Any = _MISSING) -> int:
        v = self.value(key, default)
        return None if v is None else int(np.asarray(v))  # type: ignore[return-value]

    def ints(self, key: str, default: Any = _MISSING) -> tuple[int, ...]:
        v = self.value(key, default)
        if v is None:
            return None  # type: ignore[return-value]
        return tuple(int(i) for i in np.asarray(v).reshape(-1))

    def bools(self, key: str, default: Any = _MISSING) -> tuple[bool, ...]:
        v = self.value(key, default)
        if v is None:
            return None  # type: ignore[return-value]
        return tuple(bool(i) for i in np.asarray(v).reshape(-1))

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        return bool(np.asarray(self.value(key, default)))

    def float(self, key: str, default: Any = _MISSING) -> float:
        return float(np.asarray(self.value(key, default)))

    def str(self, key: str, default: Any = _MISSING) -> str:
        v = self.value(key, default)
        return v if isinstance(v, str) else str(np.asarray(v).reshape(-1)[0])

    @property
    def out_dtype(self) -> np.dtype | None:
        return self.op.outputs[0].dtype

    def fail(self, message: str) -> MilError:
        return MilError(f"op '{self.op.name}' ({self.op.type}): {message}")
