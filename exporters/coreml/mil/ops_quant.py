"""Quantization ops: compile-time weight dequantization and runtime activation Q/DQ.

Semantics from the MIL ops reference (coremltools ``ops.defs.iOS16.constexpr_ops``,
``iOS18.compression``, ``iOS17.quantization_ops``):

* ``constexpr_affine_dequantize``: ``scale * (quantized_data - zero_point)``, scale and
  zero point scalars or vectors along ``axis``.
* ``constexpr_blockwise_shift_scale`` (iOS18): ``scale * (data - offset)`` where each
  of scale / offset covers a block of ``data.shape[i] / scale.shape[i]`` elements.
* ``constexpr_cast`` (iOS16): a constant cast (fp16 → fp32).
* ``quantize``: ``clip(round(input / scale) + zero_point)`` to the int8 / uint8 range;
  rounding is half-to-even (``np.rint``) — the reference does not name a rounding mode.
* ``dequantize``: ``scale * (input - zero_point)``.

The quotient ``input / scale`` is computed in float32 even in FP16 programs, so a value
that lands within FP16 rounding of a .5 boundary may quantize one step away from what
FP16 hardware computes; docs/coreml.md lists this among the limits.
"""
from __future__ import annotations

import numpy as np

from .dtypes import NAMED
from .registry import OpCall, op


def _along(v: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """A scalar stays a scalar; a vector is shaped to broadcast along ``axis``."""
    v = np.asarray(v)
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    axis = 0 if axis is None else axis % ndim
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


@op("constexpr_affine_dequantize", const_time=True)
def constexpr_affine_dequantize(call: OpCall) -> np.ndarray:
    q = np.asarray(call.value("quantized_data"))
    axis = call.int("axis", 0)
    zp = _along(call.value("zero_point"), q.ndim, axis).astype(np.float32)
    scale = _along(call.f32("scale"), q.ndim, axis)
    return scale * (q.astype(np.float32) - zp)


def _blocks(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    for d, (n, m) in enumerate(zip(shape, v.shape)):
        if m != n:
            v = np.repeat(v, n // m, axis=d)
    return v


@op("constexpr_blockwise_shift_scale", const_time=True)
def constexpr_blockwise_shift_scale(call: OpCall) -> np.ndarray:
    data = np.asarray(call.value("data"))
    scale = call.f32("scale")
    if scale.ndim != data.ndim or any(n % m for n, m in zip(data.shape, scale.shape)):
        raise call.fail(f"scale shape {scale.shape} does not tile data shape {data.shape}")
    x = data.astype(np.float32)
    if call.has("offset"):
        x = x - _blocks(np.asarray(call.value("offset")).astype(np.float32), data.shape)
    return _blocks(scale, data.shape) * x


@op("constexpr_cast", const_time=True)
def constexpr_cast(call: OpCall) -> np.ndarray:
    return np.asarray(call.value("source_val")).astype(NAMED[call.str("output_dtype")])


@op("quantize")
def quantize(call: OpCall) -> np.ndarray:
    x = call.f32("input")
    axis = call.int("axis", None)
    target = NAMED.get(call.str("output_dtype"))
    if target is None or target.kind not in "iu" or target.itemsize != 1:
        raise call.fail(f"output_dtype {call.str('output_dtype')!r} is not int8 / uint8")
    scale = _along(call.f32("scale"), x.ndim, axis)
    zp = _along(call.value("zero_point"), x.ndim, axis).astype(np.float32) if call.has("zero_point") else 0
    info = np.iinfo(target)
    q = np.rint(x / scale) + zp
    return np.clip(q, info.min, info.max).astype(target)


@op("dequantize")
def dequantize(call: OpCall) -> np.ndarray:
    q = np.asarray(call.value("input"))
    axis = call.int("axis", None)
    scale = _along(call.f32("scale"), q.ndim, axis)
    zp = _along(call.value("zero_point"), q.ndim, axis).astype(np.float32) if call.has("zero_point") else 0
    return scale * (q.astype(np.float32) - zp)
