"""The squeeze-excite gate multiply as a full-size, multi-threaded QLinearMul in ONNX Runtime.

A squeeze-excite block ends in ``x · gate``: x is [N, C, H, W], the gate [N, C, 1, 1]. In
the ONNX Runtime form both are dequantized uint8 and ONNX Runtime fuses the ``Mul`` into a
QLinearMul, which it runs in NHWC: x [N, H, W, C] against a gate broadcast along H and W.
Its broadcasting loop runs that on one thread, one C-wide span at a time; profiled on
EfficientNet-B0 (2 threads, batch 1) the gate multiply of the 112×112×32 block took 0.35 ms
and the SiLU multiply of the same size, with no broadcast, 0.11 ms. The 16 gates were a
tenth of B0's INT8 time and made it slower than FP32.

The rewrite spells the NHWC layout out and gives the multiply operands of equal shape:

* ``x → Transpose(0, 2, 3, 1)`` (uint8 Q/DQ on x's own scale around it);
* ``gate → Transpose(0, 2, 3, 1) → Q → Expand([N, H, W, C]) → DQ`` on the gate's scale
  (Expand copies uint8; the values are the gate's own);
* ``Mul`` of the two with the original output Q, then ``Transpose(0, 3, 1, 2)`` back.

ONNX Runtime's layout pass cancels the spelled-out transposes against the ones it puts
around its NHWC convolutions, so what runs is one uint8 Expand (0.03 ms for the largest
gate) and a non-broadcast QLinearMul (0.10 ms). Every value is the one the broadcast
multiply computed: the test compares the outputs integer for integer. Only graphs with
static shapes are rewritten (the Expand needs [N, H, W, C]).

Only multiplies big enough for ONNX Runtime to split are expanded. QLinearMul asks its thread
pool for ``N·H·W·C`` elements at one cycle each, and the pool (Eigen's cost model: 11/64 of a
cycle per byte loaded and stored, 100,000 cycles to start a thread) runs fewer than
``PARALLEL_MIN_ELEMENTS`` on the calling thread alone (onnxruntime/core/platform/threadpool.cc,
``ThreadPool::ParallelFor``; contrib_ops/cpu/quantization/qlinear_binary_op.cc). Below that
the full-size multiply is as serial as the broadcast one and the Expand is pure cost; measured
(2 threads): 14×14×672, broadcast 0.056 ms against Expand + multiply 0.073 ms; 7×7×1152, 0.036
against 0.049 ms; 28×28×240, above the line, 0.095 against 0.074 ms.
"""
from __future__ import annotations

import numpy as np

from calibration import graph as g

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
# The smallest element-wise job ONNX Runtime's pool gives a second thread: (1 + 2·11/64)
# cycles per uint8 element must reach 210,000 cycles (see the module docstring).
PARALLEL_MIN_ELEMENTS = 156_280


def full_size_gates(model, ix: g.GraphIndex | None = None) -> int:
    """Rewrite, in place, each per-channel gate multiply (see the module docstring).
    Returns how many."""
    shapes = {t: d for t, d in g.inferred_dims(model).items() if d and all(x > 0 for x in d)}
    ix = ix or g.GraphIndex(model)
    inits, prod, cons = ix.inits, ix.producer, ix.consumers
    replace: dict[str, list] = {}
    for n in model.graph.node:
        found = _gate_mul(n, shapes, inits, prod, cons)
        if found is not None:
            replace[n.name] = _rewrite(model, n, *found)
    if not replace:
        return 0
    nodes = [new for n in model.graph.node for new in replace.get(n.name, [n])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # the new tensors' shapes differ; ONNX Runtime infers them
    return len(replace)


def _gate_mul(n, shapes, inits, prod, cons):
    """(x's DQ, the gate's DQ, the output Q, x's shape) for ``x · gate`` between per-tensor
    DQs with one per-tensor Q after it; None for any other node."""
    if n.op_type != "Mul":
        return None
    a, b = n.input
    sa, sb = shapes.get(a), shapes.get(b)
    if sa is None or sb is None or len(sa) != 4:
        return None
    if sa[2:] == [1, 1]:
        a, b, sa, sb = b, a, sb, sa
    if sb != [sa[0], sa[1], 1, 1] or sa[2] * sa[3] == 1 or int(np.prod(sa)) < PARALLEL_MIN_ELEMENTS:
        return None
    users = cons.get(n.output[0], [])
    dqs = [prod.get(a), prod.get(b)]
    if len(users) != 1 or not g.per_tensor(users[0], "QuantizeLinear", inits):
        return None
    if not all(d is not None and g.per_tensor(d, "DequantizeLinear", inits) for d in dqs):
        return None
    return dqs[0], dqs[1], users[0], sa


def _rewrite(model, mul, x_dq, gate_dq, out_q, shape) -> list:
    helper, nh = g.onnx_mod().helper, g.onnx_mod().numpy_helper
    base = g.safe_name(mul.name)
    full = f"{base}_nhwc_shape"
    model.graph.initializer.append(nh.from_array(np.array([shape[0], shape[2], shape[3], shape[1]], np.int64), full))

    def node(op, ins, out, **kw):
        return helper.make_node(op, ins, [out], name=f"{out}_{op}", **kw)

    def q(t, like, out=None):
        return node("QuantizeLinear", [t, *like.input[1:3]], out or f"{t}_q")

    def dq(t, like, out):
        return node("DequantizeLinear", [t, *like.input[1:3]], out)

    x, gate, product = f"{base}_x_nhwc", f"{base}_gate_nhwc", f"{base}_product"
    return [
        node("Transpose", [x_dq.output[0]], x, perm=TO_NHWC), q(x, x_dq), dq(f"{x}_q", x_dq, f"{x}_dq"),
        node("Transpose", [gate_dq.output[0]], gate, perm=TO_NHWC), q(gate, gate_dq),
        node("Expand", [f"{gate}_q", full], f"{gate}_full_q"), dq(f"{gate}_full_q", gate_dq, f"{gate}_full_dq"),
        node("Mul", [f"{x}_dq", f"{gate}_full_dq"], product), q(product, out_q), dq(f"{product}_q", out_q, f"{product}_dq"),
        node("Transpose", [f"{product}_dq"], mul.output[0], perm=TO_NCHW),
    ]
