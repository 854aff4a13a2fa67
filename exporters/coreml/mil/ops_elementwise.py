"""Elementwise activations and binary / unary arithmetic.

Semantics from the MIL ops reference (coremltools ``ops.defs.iOS15.activation`` and
``elementwise_binary`` / ``elementwise_unary``): NumPy broadcasting for binary ops;
``clip(x, alpha, beta)``; ``sigmoid_hard = min(max(alpha*x + beta, 0), 1)``;
``thresholded_relu = x if x >= alpha else 0``; ``silu = x * sigmoid(x)``;
``rsqrt = 1 / sqrt(x + epsilon)``. Floating values are computed in float32 (the
executor rounds to the declared output type); integer values keep their type.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import OpCall, op


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x < -88 gives the right limit, 0
        return 1 / (1 + np.exp(-x))


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum,
    "pow": np.power, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "less": np.less, "less_equal": np.less_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}


def _binary(fn):
    def impl(call: OpCall) -> np.ndarray:
        return fn(call.num("x"), call.num("y"))
    return impl


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


@op("real_div")
def real_div(call: OpCall) -> np.ndarray:
    x, y = call.num("x"), call.num("y")
    if x.dtype.kind in "iub" and y.dtype.kind in "iub":
        return np.floor_divide(x, y)
    return np.true_divide(x, y, dtype=np.float32)


_UNARY = {
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "relu6": lambda x: np.clip(x, np.float32(0), np.float32(6)),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "tanh": np.tanh, "exp": np.exp, "abs": np.abs, "sqrt": np.sqrt, "square": np.square,
    "floor": np.floor, "ceil": np.ceil, "sign": np.sign, "sin": np.sin, "cos": np.cos,
    "round": np.rint, "logical_not": np.logical_not,
    "erf": np.vectorize(math.erf, otypes=[np.float32]),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(np.float32(0), x),
}


def _unary(fn):
    def impl(call: OpCall) -> np.ndarray:
        return fn(call.num("x"))
    return impl


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("clip")
def clip(call: OpCall) -> np.ndarray:
    return np.clip(call.f32("x"), np.float32(call.float("alpha")), np.float32(call.float("beta")))


@op("sigmoid_hard")
def sigmoid_hard(call: OpCall) -> np.ndarray:
    a, b = np.float32(call.float("alpha", 0.2)), np.float32(call.float("beta", 0.5))
    return np.clip(a * call.f32("x") + b, np.float32(0), np.float32(1))


@op("thresholded_relu")
def thresholded_relu(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    return np.where(x >= np.float32(call.float("alpha", 1.0)), x, np.float32(0))


@op("leaky_relu")
def leaky_relu(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    return np.where(x >= 0, x, np.float32(call.float("alpha", 0.01)) * x)


@op("elu")
def elu(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    return np.where(x > 0, x, np.float32(call.float("alpha", 1.0)) * np.expm1(np.minimum(x, 0)))


@op("prelu")
def prelu(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    alpha = call.f32("alpha").reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, alpha * x)


@op("linear_activation")
def linear_activation(call: OpCall) -> np.ndarray:
    return np.float32(call.float("alpha")) * call.f32("x") + np.float32(call.float("beta", 0.0))


@op("scaled_tanh")
def scaled_tanh(call: OpCall) -> np.ndarray:
    return np.float32(call.float("alpha", 1.0)) * np.tanh(np.float32(call.float("beta", 1.0)) * call.f32("x"))


@op("gelu")
def gelu(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    mode = call.str("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(np.float32(1.702) * x)
    return 0.5 * x * (1 + _UNARY["erf"](x / np.float32(math.sqrt(2))))


def _eps(call: OpCall, default: float) -> np.float32:
    return np.float32(call.float("epsilon", default))


@op("rsqrt")
def rsqrt(call: OpCall) -> np.ndarray:
    return 1 / np.sqrt(call.f32("x") + _eps(call, 1e-12))


@op("inverse")
def inverse(call: OpCall) -> np.ndarray:
    return 1 / (call.f32("x") + _eps(call, 1e-4))


@op("log")
def log(call: OpCall) -> np.ndarray:
    return np.log(call.f32("x") + _eps(call, 1e-45))
