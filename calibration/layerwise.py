"""Layer-wise tools: input patches, weight rows, and GPTQ rounding.

Rounding each INT8 weight to its nearest value minimises the weight error, not the
error of the layer's *output*. Given the covariance ``H`` of a layer's input patches,
:func:`gptq_rows` quantizes the weights one input column at a time and pushes the
rounding error of each column onto the columns not yet quantized, weighted by
``H⁻¹`` (the optimal-brain-quantization update of Frantar et al., *GPTQ*, ICLR 2023).
Per-channel scales stay as they are, so the result is plain symmetric per-channel
INT8. :mod:`calibration.weights` decides where it is used.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import graph as g
from .qdq import PAIR_BUDGET, W_QMAX


def _patches(node, x: torch.Tensor) -> torch.Tensor:
    """Input patches as (groups, d, positions)."""
    if node.op_type == "Conv":
        nd = x.ndim - 2
        if nd != 2:
            raise ValueError("only 2-D convolutions")
        k = g.attr(node, "kernel_shape", None)
        pads = list(g.attr(node, "pads", [0, 0, 0, 0]))
        x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]]) if any(pads) else x
        group = int(g.attr(node, "group", 1))
        if k is None:
            raise ValueError("Conv without kernel_shape")
        cols = F.unfold(x, list(k), dilation=list(g.attr(node, "dilations", [1, 1])),
                        stride=list(g.attr(node, "strides", [1, 1])))           # (N, C*kh*kw, L)
        n, ck, L = cols.shape
        cols = cols.reshape(n, group, ck // group, L).permute(1, 2, 0, 3)   # (g, d, N, L)
        return cols.reshape(group, ck // group, n * L)
    return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)                           # (1, K, rows)


def _weight_rows(node, w: torch.Tensor, axis: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Weight as (groups, rows, d) plus the inverse reshaping."""
    if node.op_type == "Conv":
        group = int(g.attr(node, "group", 1))
        shape = w.shape
        rows = w.reshape(group, shape[0] // group, -1)
        return rows, lambda r: r.reshape(shape)
    if axis == 0:   # Gemm transB: (N, K)
        return w.unsqueeze(0), lambda r: r[0]
    return w.T.unsqueeze(0), lambda r: r[0].T   # (K, N) -> rows N


def partners(d: int, channels: int) -> torch.Tensor:
    """For the columns of a row layout (d = channels · taps, channel-major, as :func:`_weight_rows` lays a
    Conv out; taps = 1 for Gemm/MatMul): the column that u8×s8 kernels pair with each, -1 for none
    (the same tap of channel c xor 1, calibration.qdq.PAIR_BUDGET)."""
    taps = d // channels
    k = torch.arange(d)
    p = (k // taps) ^ 1
    return torch.where(p < channels, p * taps + k % taps, -1)


@torch.no_grad()
def gptq_rows(w: torch.Tensor, h: torch.Tensor, scales: torch.Tensor, damp: float = 0.01,
              partner: torch.Tensor | None = None, tick: Callable[[], None] | None = None) -> torch.Tensor:
    """Quantize ``w`` (groups, rows, d) column by column with error feedback through
    ``h`` (groups, d, d); ``scales`` (groups, rows). ``partner`` (:func:`partners`): each column's
    integers are held to PAIR_BUDGET minus its partner's, where that was rounded first.
    ``tick``: called after each block of columns (a 4608-input layer takes tens of seconds: the
    caller's progress line keeps moving). Returns the dequantized weights."""
    w = w.double().clone()
    h = h.double().clone()
    gcount, rows, d = w.shape
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0
    idx = torch.arange(d)
    h[:, idx, idx] += dead.double()
    w[dead.unsqueeze(1).expand_as(w)] = 0
    # quantize the most active inputs first (act order)
    order = torch.argsort(torch.diagonal(h, dim1=1, dim2=2), dim=1, descending=True)
    inv = torch.argsort(order, dim=1)
    w = torch.gather(w, 2, order.unsqueeze(1).expand_as(w))
    h = torch.gather(torch.gather(h, 1, order.unsqueeze(2).expand_as(h)), 2, order.unsqueeze(1).expand_as(h))
    mean_diag = torch.diagonal(h, dim1=1, dim2=2).mean(dim=1)
    h[:, idx, idx] += damp * mean_diag.unsqueeze(1)
    # U (upper) with UᵀU = H⁻¹, from one factorization: with J the order reversal and J H J = L Lᵀ,
    # H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J) and J L⁻¹ J is upper triangular. 2.2x faster than factoring H, inverting
    # and factoring H⁻¹ on a 4608-input layer; the same U to 4e-16
    low = torch.linalg.cholesky(h.flip(1, 2))
    u = torch.linalg.solve_triangular(low, torch.eye(d, dtype=h.dtype).expand_as(low), upper=False).flip(1, 2)
    s = scales.double()
    ppos = None
    if partner is not None:   # each position's partner's position in the act order (d: none)
        po = partner[order]
        ppos = torch.where(po >= 0, torch.gather(inv, 1, po.clamp(min=0)), torch.full_like(po, d)).numpy()
    qint = np.zeros((gcount, d, rows)) if ppos is not None else None
    sn, un = s.numpy(), u.numpy()
    qt = np.zeros((gcount, d, rows))   # column-major copies: each column's rows are contiguous
    gi = np.arange(gcount)[:, None]
    # 32 columns a block: the in-block updates are elementwise (rows × block² / 2 a block), the rest one
    # matmul. Untrained efficientnet_b0 at 64 px, its 166 layers: 13.7 s with torch ops and 64-column
    # blocks, 5.4 s now, the same integers in every layer (2026-12-07)
    block = 32
    for i1 in range(0, d, block):   # lazy-batch updates: columns in blocks, one matmul per block
        i2 = min(i1 + block, d)
        w1 = w[:, :, i1:i2].transpose(1, 2).numpy().copy()   # (g, cols, rows)
        e1 = np.zeros_like(w1)
        u1 = un[:, i1:i2, i1:i2]
        # the column loop runs in NumPy (a torch call costs microseconds of dispatch, and this loop is
        # most of the weight step's time); the arithmetic is the same, element for element
        for j in range(i2 - i1):
            col = w1[:, j]
            qi = np.clip(np.round(col / sn), -W_QMAX, W_QMAX)
            if ppos is not None:
                pj = ppos[:, i1 + j]
                done = (pj < i1 + j)[:, None]
                other = qint[gi, np.minimum(pj, d - 1)[:, None]].reshape(gcount, rows)
                bound = np.where(done, PAIR_BUDGET - np.abs(other), float(W_QMAX))
                qi = np.maximum(np.minimum(qi, bound), -bound)
                qint[:, i1 + j] = qi
            qc = qi * sn
            qt[:, i1 + j] = qc
            err = (col - qc) / u1[:, j, j][:, None]
            w1[:, j:] -= u1[:, j, j:, None] * err[:, None, :]
            e1[:, j] = err
        if i2 < d:
            w[:, :, i2:] -= torch.bmm(torch.from_numpy(e1).transpose(1, 2), u[:, i1:i2, i2:])
        if tick is not None:
            tick()
    q = torch.from_numpy(qt).transpose(1, 2)
    return torch.gather(q, 2, inv.unsqueeze(1).expand_as(q)).float()


def _broadcast(scales: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    view = [1] * len(shape)
    view[axis] = -1
    return np.ascontiguousarray(np.broadcast_to(scales.reshape(view), shape)).astype(np.float32)
