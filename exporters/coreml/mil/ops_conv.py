"""Convolution, pooling and batch norm (NCHW, 2-D spatial), fast enough for full-size images.

Semantics follow the MIL ops reference (coremltools ``ops.defs.iOS15.conv``,
``iOS15.pool.avg_pool`` / ``max_pool``, ``iOS15.normalization.batch_norm``): weight
``[C_out, C_in/groups, KH, KW]``; ``pad_type`` valid / custom (``pad`` =
[top, bottom, left, right]) / same / same_lower; output size
``floor((D + pad_before + pad_after - (K-1)*dilation - 1) / stride) + 1``; pooling's
``ceil_mode`` with the documented "last window must start inside the input" rule and
``exclude_padding_from_average``.

Speed: a 1x1 convolution is one matrix product; a depthwise convolution accumulates
its KH*KW taps over strided views; any other convolution is im2col (a strided view,
copied once per group) times the weight matrix. Everything runs in float32 on NumPy's
BLAS.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .registry import OpCall, op


def _same_pads(size: int, kernel: int, stride: int, lower: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def spatial_pads(call: OpCall, sizes: tuple[int, ...], kernels: tuple[int, ...],
                 strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """(before, after) per spatial dimension for ``pad_type`` / ``pad``."""
    pad_type = call.str("pad_type", "valid")
    if pad_type == "valid":
        return [(0, 0)] * len(sizes)
    if pad_type == "custom":
        p = call.ints("pad", (0,) * (2 * len(sizes)))
        return [(p[2 * i], p[2 * i + 1]) for i in range(len(sizes))]
    if pad_type in ("same", "same_lower"):
        return [_same_pads(s, k, st, pad_type == "same_lower") for s, k, st in zip(sizes, kernels, strides)]
    raise call.fail(f"pad_type '{pad_type}' is not supported")


def _pad_hw(x: np.ndarray, pads: list[tuple[int, int]], value: float = 0.0) -> np.ndarray:
    if not any(a or b for a, b in pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), *pads), mode="constant", constant_values=value)


def _taps(xp: np.ndarray, kh: int, kw: int, oh: int, ow: int, sh: int, sw: int, dh: int = 1, dw: int = 1):
    """(i, j, strided view of the input under tap (i, j)) for every kernel position."""
    for i in range(kh):
        for j in range(kw):
            h0, w0 = i * dh, j * dw
            yield i, j, xp[:, :, h0:h0 + sh * (oh - 1) + 1:sh, w0:w0 + sw * (ow - 1) + 1:sw]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides=(1, 1), pads=((0, 0), (0, 0)),
           dilations=(1, 1), groups: int = 1) -> np.ndarray:
    """float32 NCHW convolution; ``pads`` = ((top, bottom), (left, right))."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    oh = (h + pads[0][0] + pads[0][1] - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pads[1][0] + pads[1][1] - (kw - 1) * dw - 1) // sw + 1
    og = o // groups
    if groups == c and cg == 1 and not (kh == kw == 1):
        out = _depthwise(_pad_hw(x, list(pads)), w, o // c, oh, ow, sh, sw, dh, dw)
    else:
        wm = w.reshape(groups, og, cg * kh * kw)
        out = np.empty((n, o, oh * ow), np.float32)
        if kh == kw == 1 and not any(p for pair in pads for p in pair):
            xs = x[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else x
            cols = np.ascontiguousarray(xs[:, :, :oh, :ow]).reshape(n, c, oh * ow)
        else:
            xp = np.ascontiguousarray(_pad_hw(x, list(pads)))
            s0, s1, s2, s3 = xp.strides
            win = as_strided(xp, shape=(n, c, kh, kw, oh, ow),
                             strides=(s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw), writeable=False)
            cols = win.reshape(n, c * kh * kw, oh * ow)  # the im2col copy
        for i in range(n):
            for g in range(groups):
                # 2-D products: np.dot always reaches BLAS sgemm (a broadcast 3-D matmul may not)
                np.dot(wm[g], cols[i, g * cg * kh * kw:(g + 1) * cg * kh * kw], out=out[i, g * og:(g + 1) * og])
        out = out.reshape(n, o, oh, ow)
    if b is not None:
        out += b.reshape(1, o, 1, 1)
    return out


def _depthwise(xp: np.ndarray, w: np.ndarray, mult: int, oh: int, ow: int, sh: int, sw: int,
               dh: int, dw: int) -> np.ndarray:
    n, c = xp.shape[:2]
    o, _, kh, kw = w.shape
    if mult > 1:  # channel multiplier: input channel k feeds outputs k*mult .. k*mult+mult-1
        xp = np.repeat(xp, mult, axis=1)
    out = np.zeros((n, o, oh, ow), np.float32)
    tmp = np.empty_like(out)
    for i, j, view in _taps(xp, kh, kw, oh, ow, sh, sw, dh, dw):
        np.multiply(view, w[:, 0, i, j].reshape(1, o, 1, 1), out=tmp)
        out += tmp
    return out


def _hw(call: OpCall, key: str, default: int) -> tuple[int, int]:
    v = call.ints(key, (default, default))
    return (v[0], v[1]) if len(v) == 2 else (v[0], v[0])


@op("conv")
def conv(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    w = call.f32("weight")
    if x.ndim != 4 or w.ndim != 4:
        raise call.fail(f"only 2-D convolution is supported (input rank {x.ndim})")
    strides, dil = _hw(call, "strides", 1), _hw(call, "dilations", 1)
    kd = ((w.shape[2] - 1) * dil[0] + 1, (w.shape[3] - 1) * dil[1] + 1)
    pads = spatial_pads(call, x.shape[2:], kd, strides)
    groups = call.int("groups", 1)
    if x.shape[1] != w.shape[1] * groups:
        raise call.fail(f"input has {x.shape[1]} channels, weight expects {w.shape[1]} x {groups} groups")
    bias = call.f32("bias") if call.has("bias") else None
    return conv2d(x, w, bias, strides, tuple(pads), dil, groups)


def _pool_geometry(call: OpCall, x: np.ndarray):
    if x.ndim != 4:
        raise call.fail(f"only 2-D pooling is supported (input rank {x.ndim})")
    ks = _hw(call, "kernel_sizes", 1)
    st = _hw(call, "strides", 1)
    pads = spatial_pads(call, x.shape[2:], ks, st)
    ceil = call.bool("ceil_mode", False)
    outs, extra = [], []
    for size, k, s, (a, b) in zip(x.shape[2:], ks, st, pads):
        span = size + a + b - k
        o = (math.ceil(span / s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= size + a and (a + b) > 0:
            o -= 1
        outs.append(o)
        extra.append(max(0, (o - 1) * s + k - (size + a + b)))
    return ks, st, pads, outs, extra


@op("max_pool")
def max_pool(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    (kh, kw), (sh, sw), pads, (oh, ow), extra = _pool_geometry(call, x)
    xp = _pad_hw(x, [(pads[0][0], pads[0][1] + extra[0]), (pads[1][0], pads[1][1] + extra[1])], -np.inf)
    out = None
    for _, _, view in _taps(xp, kh, kw, oh, ow, sh, sw):
        out = view.copy() if out is None else np.maximum(out, view, out=out)
    return out


@op("avg_pool")
def avg_pool(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    (kh, kw), (sh, sw), pads, (oh, ow), extra = _pool_geometry(call, x)
    full = [(pads[0][0], pads[0][1] + extra[0]), (pads[1][0], pads[1][1] + extra[1])]
    xp = _pad_hw(x, full)
    total = np.zeros((x.shape[0], x.shape[1], oh, ow), np.float32)
    for _, _, view in _taps(xp, kh, kw, oh, ow, sh, sw):
        total += view
    # divisor: the window's cells inside the input (exclude_padding_from_average) or inside
    # input + explicit padding (the ceil_mode overhang never counts)
    h, w = x.shape[2:]
    mask = np.zeros((1, 1, h + full[0][0] + full[0][1], w + full[1][0] + full[1][1]), np.float32)
    if call.bool("exclude_padding_from_average", False):
        mask[:, :, full[0][0]:full[0][0] + h, full[1][0]:full[1][0] + w] = 1
    else:
        mask[:, :, :h + pads[0][0] + pads[0][1], :w + pads[1][0] + pads[1][1]] = 1
    count = np.zeros((1, 1, oh, ow), np.float32)
    for _, _, view in _taps(mask, kh, kw, oh, ow, sh, sw):
        count += view
    return total / np.maximum(count, 1)


@op("batch_norm")
def batch_norm(call: OpCall) -> np.ndarray:
    x = call.f32("x")
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean, var = call.f32("mean").reshape(shape), call.f32("variance").reshape(shape)
    eps = call.float("epsilon", 1e-5)
    y = (x - mean) / np.sqrt(var + np.float32(eps))
    if call.has("gamma"):
        y = y * call.f32("gamma").reshape(shape)
    if call.has("beta"):
        y = y + call.f32("beta").reshape(shape)
    return y
