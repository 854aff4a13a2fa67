"""Run an ML Program with NumPy, op by op, in the program's own types.

Loading evaluates the constants once: ``const`` values (immediate or read from the
weight file) and the compile-time ``constexpr_*`` ops. Every other op runs on each
inference in program order; its result is cast to the type the program declares for
that output (so FP16 programs are rounded to FP16 after every op) and checked against
the declared static shape, which catches a wrong translation at the op that made it.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Mapping

import numpy as np

from . import ops_conv, ops_elementwise, ops_quant, ops_tensor  # noqa: F401  (register the ops)
from .program import Op, Program, Var, load_program
from .registry import CONST_TIME, OPS, MilError, OpCall


def supported_ops() -> list[str]:
    return sorted(["const", *OPS])


_CONTROLLER: Any = None


def blas_threads(n: int | None):
    """Limit NumPy's BLAS to ``n`` threads while the interpreter runs (``None``: leave it).

    The interpreter's matrix products are small; OpenBLAS threads spin-wait when cores are
    shared, and on a loaded 2-core machine a 24x96x576 sgemm took 16 ms with two threads
    and 0.035 ms with one. Uses threadpoolctl when it is installed."""
    global _CONTROLLER
    if n is None:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=n, user_api="blas") if _CONTROLLER else contextlib.nullcontext()


class Interpreter:
    """``Interpreter(program).run({name: array}) -> {output name: array}``.

    ``threads``: BLAS threads while running (default 1, see :func:`blas_threads`)."""

    def __init__(self, program: Program | str, function: str = "main", threads: int | None = 1):
        self.threads = threads
        self.program = program if isinstance(program, Program) else load_program(program, function)
        unknown = sorted({o.type for o in self.program.ops if o.type != "const" and o.type not in OPS})
        if unknown:
            where = next(o for o in self.program.ops if o.type == unknown[0])
            raise MilError(f"MIL op '{unknown[0]}' (first at '{where.name}') in model {self.program.name} is not "
                           f"supported by the reference interpreter"
                           + (f"; also unsupported: {', '.join(unknown[1:])}" if unknown[1:] else ""),
                           hint="see docs/coreml.md for the supported ops; on macOS the Core ML runtime runs it")
        flow = [o for o in self.program.ops if o.has_blocks]
        if flow:
            raise MilError(f"op '{flow[0].name}' ({flow[0].type}) in model {self.program.name} has nested blocks "
                           "(control flow), which the reference interpreter does not execute")
        self.consts: dict[str, Any] = {}
        self._cache: dict[str, np.ndarray] = {}
        self.steps: list[Op] = []
        for o in self.program.ops:
            if o.type == "const":
                self.consts[o.outputs[0].name] = o.value
            elif o.type in CONST_TIME:
                self._execute(o, self.consts)
            else:
                self.steps.append(o)
        self._last_use = self._lifetimes()

    def _lifetimes(self) -> dict[str, int]:
        """Index of the last step that reads each runtime value (freed after it)."""
        last: dict[str, int] = {}
        for i, o in enumerate(self.steps):
            for bindings in o.inputs.values():
                for b in bindings:
                    if isinstance(b, str) and b not in self.consts:
                        last[b] = i
        for name in self.program.outputs:
            last[name] = len(self.steps)
        return last

    def _execute(self, o: Op, env: dict[str, Any]) -> None:
        call = OpCall(o, env, self.consts, self._cache)
        try:
            result = OPS[o.type](call)
        except MilError:
            raise
        except Exception as exc:
            raise MilError(f"op '{o.name}' ({o.type}) in model {self.program.name} failed: "
                           f"{type(exc).__name__}: {exc}") from exc
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(o.outputs):
            raise MilError(f"op '{o.name}' ({o.type}) produced {len(results)} values, the program declares "
                           f"{len(o.outputs)}")
        for var, val in zip(o.outputs, results):
            env[var.name] = _conform(val, var, o, self.program.name)

    def run(self, feeds: Mapping[str, np.ndarray], keep_all: bool = False,
            profile: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Execute once. ``keep_all`` returns every intermediate value too (for localizing
        a divergence); otherwise values are freed after their last use. ``profile``, if
        given, accumulates seconds per op type."""
        with blas_threads(self.threads):
            return self._run(feeds, keep_all, profile)

    def _run(self, feeds: Mapping[str, np.ndarray], keep_all: bool,
             profile: dict[str, float] | None) -> dict[str, np.ndarray]:
        env: dict[str, Any] = dict(self.consts)
        for var in self.program.inputs:
            if var.name not in feeds:
                raise MilError(f"model {self.program.name} needs input '{var.name}'",
                               hint=f"inputs: {', '.join(v.name for v in self.program.inputs)}")
            env[var.name] = _conform(np.asarray(feeds[var.name]), var, None, self.program.name)
        for i, o in enumerate(self.steps):
            if profile is None:
                self._execute(o, env)
            else:
                t0 = time.perf_counter()
                self._execute(o, env)
                profile[o.type] = profile.get(o.type, 0.0) + time.perf_counter() - t0
            if not keep_all:
                for bindings in o.inputs.values():
                    for b in bindings:
                        if isinstance(b, str) and self._last_use.get(b) == i:
                            env.pop(b, None)
        if keep_all:
            return {k: v for k, v in env.items() if k not in self.consts}
        return {name: env[name] for name in self.program.outputs}


def _conform(val: Any, var: Var, o: Op | None, model: str) -> Any:
    """Cast to the declared type; refuse a shape that contradicts the declared one."""
    if var.dtype is None or isinstance(val, (str, list)):
        return val
    arr = np.asarray(val)
    if arr.dtype != var.dtype:
        arr = arr.astype(var.dtype)
    if var.shape is not None and (len(var.shape) != arr.ndim or
                                  any(d is not None and d != s for d, s in zip(var.shape, arr.shape))):
        where = f"op '{o.name}' ({o.type})" if o else "input"
        raise MilError(f"{where} in model {model}: value '{var.name}' has shape {list(arr.shape)}, the program "
                       f"declares {list(var.shape)}")
    return arr
