"""Shape and layout ops, reductions, softmax, linear / matmul and casts.

Semantics from the MIL ops reference (coremltools ``ops.defs.iOS15.tensor_transformation``,
``tensor_operation``, ``reduction``, ``linear``, ``activation.softmax``,
``elementwise_unary.cast``): ``reshape`` accepts ``-1`` and ``0`` (copy the input's
dimension when the rank is unchanged); ``slice_by_index`` with begin/end/stride and the
begin / end / squeeze masks; ``slice_by_size`` with ``-1`` meaning "to the end";
``split`` by ``num_splits`` or ``split_sizes``; ``concat`` with ``interleave``;
``linear = x @ weight.T + bias``; ``matmul`` with ``transpose_x`` / ``transpose_y``.
Layout ops keep their input's type; arithmetic runs in float32.
"""
from __future__ import annotations

import numpy as np

from .dtypes import NAMED
from .registry import OpCall, op


@op("identity")
def identity(call: OpCall):
    return call.value("x")


@op("reshape")
def reshape(call: OpCall) -> np.ndarray:
    x = np.asarray(call.value("x"))
    shape = list(call.ints("shape"))
    if len(shape) == x.ndim:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@op("transpose")
def transpose(call: OpCall) -> np.ndarray:
    return np.transpose(np.asarray(call.value("x")), call.ints("perm"))


@op("squeeze")
def squeeze(call: OpCall) -> np.ndarray:
    x = np.asarray(call.value("x"))
    axes = call.ints("axes", None)
    if axes is None:
        return np.squeeze(x)
    axes = tuple(a % x.ndim for a in axes if x.shape[a] == 1)  # non-1 axes are ignored (PyTorch rule)
    return np.squeeze(x, axis=axes)


@op("expand_dims")
def expand_dims(call: OpCall) -> np.ndarray:
    x = np.asarray(call.value("x"))
    axes = call.ints("axes")
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


@op("concat")
def concat(call: OpCall) -> np.ndarray:
    values = [np.asarray(v) for v in call.values("values")]
    axis = call.int("axis")
    if call.bool("interleave", False):
        stacked = np.stack(values, axis=axis % values[0].ndim + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    dtype = np.result_type(*values)
    return np.concatenate([v.astype(dtype, copy=False) for v in values], axis=axis)


@op("split")
def split(call: OpCall) -> tuple[np.ndarray, ...]:
    x = np.asarray(call.value("x"))
    axis = call.int("axis") % x.ndim
    sizes = call.ints("split_sizes", None)
    if sizes is None:
        n = call.int("num_splits")
        if x.shape[axis] % n:
            raise call.fail(f"dimension {x.shape[axis]} does not split into {n} equal parts")
        sizes = (x.shape[axis] // n,) * n
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, bounds, axis=axis))


@op("slice_by_index")
def slice_by_index(call: OpCall) -> np.ndarray:
    x = np.asarray(call.value("x"))
    r = x.ndim
    begin, end = call.ints("begin"), call.ints("end")
    stride = call.ints("stride", (1,) * r)
    bmask = call.bools("begin_mask", (False,) * r)
    emask = call.bools("end_mask", (False,) * r)
    smask = call.bools("squeeze_mask", (False,) * r)
    index: list[slice | int] = []
    for i in range(r):
        if smask[i]:
            index.append(begin[i])
            continue
        index.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    return np.asarray(x[tuple(index)])


@op("slice_by_size")
def slice_by_size(call: OpCall) -> np.ndarray:
    x = np.asarray(call.value("x"))
    begin, size = call.ints("begin"), call.ints("size")
    index = tuple(slice(b % d if d else 0, None if s == -1 else (b % d if d else 0) + s)
                  for b, s, d in zip(begin, size, x.shape))
    return x[index]


@op("pad")
def pad(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    p = call.ints("pad")
    n = len(p) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    mode = call.str("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=call.float("constant_val", 0.0))
    if mode in ("reflect", "replicate"):
        return np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")
    raise call.fail(f"pad mode '{mode}' is not supported")


@op("tile")
def tile(call: OpCall) -> np.ndarray:
    return np.tile(np.asarray(call.value("x")), call.ints("reps"))


def _reduce(fn):
    def impl(call: OpCall) -> np.ndarray:
        x = call.num("x")
        axes = call.ints("axes", None)
        axes = None if axes is None else tuple(a % x.ndim for a in axes)
        return np.asarray(fn(x, axis=axes, keepdims=call.bool("keep_dims", False)))
    return impl


for _name, _fn in {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
                   "reduce_prod": np.prod}.items():
    op(_name)(_reduce(_fn))


@op("softmax")
def softmax(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    axis = call.int("axis", -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@op("linear")
def linear(call: OpCall) -> np.ndarray:
    x, w = call.f32("x"), call.f32("weight")
    y = np.matmul(x, w.T)
    if call.has("bias"):
        y = y + call.f32("bias")
    return y


@op("matmul")
def matmul(call: OpCall) -> np.ndarray:
    x, y = call.num("x"), call.num("y")
    if call.bool("transpose_x", False) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if call.bool("transpose_y", False) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("cast")
def cast(call: OpCall) -> np.ndarray:
    name = call.str("dtype")
    if name not in NAMED:
        raise call.fail(f"cast to '{name}' is not supported")
    x = np.asarray(call.value("x"))
    target = NAMED[name]
    if target.kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)  # float -> int truncates toward zero
    return x.astype(target)
