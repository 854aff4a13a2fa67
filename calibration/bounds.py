"""Lower bounds of activation tensors, proved from the graph (never from calibration data).

A tensor that the graph proves never below some ``floor < 0`` does not need a symmetric INT8
grid: h-swish (``x · relu6(x + 3) / 6 ≥ −0.375``) and SiLU (``x · sigmoid(x) ≥ −0.2785``)
outputs, what pools or reshapes them, and a squeeze-excite product of them with a [0, 1]
gate. On a symmetric grid of threshold ``T`` such a tensor uses the codes of ``[floor, T]``
only, 128 + a few of 256; on a uint8 grid with a zero point it uses all 256, half the step
(about 6 dB less rounding noise on that tensor). :func:`lower_bounds` finds those floors;
``calibration.graph.nonnegative_tensors`` (floor 0, zero point 0) is the special case it
extends, and the two agree on every tensor that floor applies to (tests/calibration).

Why the bound is taken from the graph: a floor merely *seen* on the calibration photos could
be undercut by another photo, and the grid would then clip it.
"""
from __future__ import annotations

import functools

import numpy as np

from . import graph as g

#: ops whose output lies within the range of their (first) input
PASS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Squeeze",
        "Unsqueeze", "Transpose", "Identity", "ReduceMean", "ReduceMax")
GATES = ("Sigmoid", "HardSigmoid")   # outputs in [0, 1]
HARDSWISH_FLOOR = -0.375             # x · relu6(x + 3) / 6 at x = −1.5


def self_gated_floor(gate_node) -> float | None:
    """min over x of ``x · gate(x)`` (SiLU: −0.27846; x · hardsigmoid(x): −0.375), found on a
    fine grid and lowered by a margin larger than the grid's error; None when it is unbounded."""
    if gate_node.op_type == "Sigmoid":
        return _floor_of("Sigmoid", 0.0, 0.0)
    return _floor_of("HardSigmoid", float(g.attr(gate_node, "alpha", 0.2)), float(g.attr(gate_node, "beta", 0.5)))


@functools.lru_cache(maxsize=None)
def _floor_of(op: str, alpha: float, beta: float) -> float | None:
    """One grid search per gate kind (a network has dozens of identical SiLUs)."""
    x = np.linspace(-64.0, 0.0, 1 << 20)
    y = x * (1.0 / (1.0 + np.exp(-x)) if op == "Sigmoid" else np.clip(alpha * x + beta, 0.0, 1.0))
    if y[0] < y.min() + 1e-9 and y[0] < -1e-3:   # still falling at the grid's end: no floor found
        return None
    return float(y.min()) * (1 + 1e-4) - 1e-7


def lower_bounds(model) -> dict[str, float]:
    """tensor → a proven lower bound ``≤ 0`` (0: never negative), for the tensors that have one."""
    inits = g.initializers(model)
    nonneg = g.nonnegative_tensors(model)
    prod = g.producers(model)
    bounds: dict[str, float] = {t: 0.0 for t in nonneg}
    unit: set[str] = set()   # tensors in [0, 1]
    for n in model.graph.node:   # topological order (ONNX requires it)
        out, op = n.output[0] if n.output else "", n.op_type
        if op in GATES:
            unit.add(out)
        elif op in PASS and n.input and n.input[0] in unit:
            unit.add(out)
        if not out or out in bounds:
            continue
        if op == "HardSwish":
            bounds[out] = HARDSWISH_FLOOR
        elif op == "Clip" and len(n.input) > 1 and n.input[1] in inits:
            lo = float(np.asarray(g.to_array(inits[n.input[1]])).reshape(-1)[0])
            if np.isfinite(lo):
                bounds[out] = min(lo, 0.0)
        elif op in PASS and n.input and n.input[0] in bounds:
            bounds[out] = bounds[n.input[0]]
        elif op == "Concat" and n.input and all(i in bounds for i in n.input if i):
            bounds[out] = min(bounds[i] for i in n.input if i)
        elif op == "Mul" and len(n.input) == 2:
            floor = _mul_floor(n.input[0], n.input[1], bounds, unit, prod)
            if floor is not None:
                bounds[out] = floor
    return bounds


def _mul_floor(a: str, b: str, bounds: dict[str, float], unit: set[str], prod) -> float | None:
    for x, gate in ((a, b), (b, a)):
        p = prod.get(gate)
        if p is not None and p.op_type in GATES and p.input and p.input[0] == x:
            return self_gated_floor(p)       # SiLU, or h-swish written as x · hardsigmoid(x)
        if gate in unit and x in bounds:
            return min(bounds[x], 0.0)       # a squeeze-excite product: x · [0, 1] ≥ min(floor, 0)
    return None
