"""Hard-swish, hard-sigmoid and squeeze-excite pooling on ONNX Runtime's uint8 kernels.

In the ONNX Runtime form (:mod:`exporters.onnx.ort_form`) the convolutions run as QLinearConv,
but an activation between two of them still runs in float: ``DQ → HardSwish → Q``. ONNX
Runtime has no integer HardSwish or HardSigmoid; it splits HardSwish into HardSigmoid + Mul
and runs four float passes per activation, which is where MobileNetV3's INT8 time went
(profiled on MobileNetV3-Large, 2 threads: Mul 0.66, Q 0.58, DQ 0.58, HardSigmoid 0.49 ms,
against 2.2 ms for all 56 QLinearConv).

The rewrite expresses the same functions with operators ONNX Runtime does fuse:

* ``hard_sigmoid(x) = clip(x + 3, 0, 6) / 6``. ``x + 3`` is an ``Add`` of a constant between
  DQ and Q, which ONNX Runtime runs as QLinearAdd; the clip *is* that Q's saturation when the
  Q's range is exactly [0, 6] (uint8, zero point 0, scale 6/255); the ``/ 6`` is a rescale
  for free: the next DQ reads the same integers with scale 1/255.
* ``hard_swish(x) = x · hard_sigmoid(x)``: the above, then a ``Mul`` between DQs and a Q
  (QLinearMul). The squeeze-excite gate's ``x · hard_sigmoid(s)`` is the same ``Mul``.
* ``ReduceMean`` over H and W (the squeeze-excite pooling) becomes ``GlobalAveragePool``,
  which ONNX Runtime runs as QLinearGlobalAveragePool between DQ and Q.

The only new rounding is the gate's: hard_sigmoid is held on 256 levels (step 1/255), below
the 8-bit activations around it. Only the ONNX Runtime form is rewritten; the shared Q/DQ
graph that TensorRT and OpenVINO read keeps HardSwish as it is.

ONNX Runtime's QDQ fusions (QLinearAdd, QLinearMul, QLinearGlobalAveragePool are its
``com.microsoft`` contrib kernels): https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
and onnxruntime/core/optimizer/qdq_transformer/selectors_actions (operator lists).
"""
from __future__ import annotations

import numpy as np

from calibration import graph as g

GATE_LEVELS = 255
HARD_SIGMOID = (1 / 6, 0.5)  # ONNX HardSigmoid alpha, beta of hard_sigmoid(x) = relu6(x + 3) / 6


def swish_points(graph, prod, cons, dequantized: set[str], graph_outputs: set[str]) -> list[str]:
    """Swish outputs that need a uint8 Q/DQ pair to run integer: a HardSwish(t), or the Mul
    of t · Sigmoid(t) (SiLU), where t will be dequantized, and whose output is not already
    quantized by all of its consumers. ``prod``/``cons``: the graph's producer and consumer maps."""
    out = []
    for n in graph.node:
        if n.op_type == "HardSwish":
            swish = n.input[0] in dequantized
        elif n.op_type == "Mul":
            swish = any(a in dequantized and prod.get(b) is not None and prod[b].op_type == "Sigmoid"
                        and prod[b].input[0] == a for a, b in (n.input, n.input[::-1]))
        else:
            continue
        if swish and n.output[0] not in graph_outputs and not g.quantized_by_all_users(n.output[0], cons):
            out.append(n.output[0])
    return out


def integer_activations(model, ix: g.GraphIndex | None = None) -> dict:
    """Rewrite, in place, each HardSwish / HardSigmoid / Sigmoid / spatial ReduceMean whose
    input comes from a DequantizeLinear. A gate that is a graph output keeps its float
    resolution. Returns how many of each."""
    onnx = g.onnx_mod()
    helper, nh = onnx.helper, onnx.numpy_helper
    graph = model.graph
    ix = ix or g.GraphIndex(model)
    prod, inits = ix.producer, ix.inits
    ranks = _ranks(model)
    graph_outputs = {o.name for o in graph.output}
    consts = {"gate_three": np.asarray([GATE_LEVELS], np.uint8), "gate_three_scale": np.float32(3 / GATE_LEVELS),
              "gate_zero": np.uint8(0), "gate_clip_scale": np.float32(6 / GATE_LEVELS),
              "gate_scale": np.float32(1 / GATE_LEVELS)}
    names = {k: f"edgekit_{k}" for k in consts}

    def dequantized(t: str) -> bool:
        p = prod.get(t)
        return p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in inits

    def gate(x: str, out: str, base: str) -> list:
        """hard_sigmoid(x) into ``out``: DQ(3) → Add → Q[0, 6] → DQ(scale 1/255)."""
        return [helper.make_node("DequantizeLinear", [names["gate_three"], names["gate_three_scale"],
                                                       names["gate_zero"]], [f"{base}_three"], name=f"{base}_three"),
                helper.make_node("Add", [x, f"{base}_three"], [f"{base}_plus3"], name=f"{base}_plus3"),
                helper.make_node("QuantizeLinear", [f"{base}_plus3", names["gate_clip_scale"], names["gate_zero"]],
                                 [f"{base}_relu6_q"], name=f"{base}_relu6_q"),
                helper.make_node("DequantizeLinear", [f"{base}_relu6_q", names["gate_scale"], names["gate_zero"]],
                                 [out], name=f"{base}_gate")]

    def sigmoid(x: str, out: str, base: str) -> list:
        """Sigmoid with its output on 256 levels of [0, 1] (QLinearSigmoid)."""
        return [helper.make_node("Sigmoid", [x], [f"{base}_float"], name=base),
                helper.make_node("QuantizeLinear", [f"{base}_float", names["gate_scale"], names["gate_zero"]],
                                 [f"{base}_q"], name=f"{base}_q"),
                helper.make_node("DequantizeLinear", [f"{base}_q", names["gate_scale"], names["gate_zero"]],
                                 [out], name=f"{base}_gate")]

    counts = {"hard_swish": 0, "hard_sigmoid": 0, "sigmoid": 0, "global_average_pool": 0}
    nodes = []
    for n in graph.node:
        base = g.safe_name(n.name)
        if n.op_type == "HardSwish" and dequantized(n.input[0]):
            nodes += gate(n.input[0], f"{base}_hsig", base)
            nodes.append(helper.make_node("Mul", [n.input[0], f"{base}_hsig"], [n.output[0]], name=n.name))
            counts["hard_swish"] += 1
        elif n.op_type == "Sigmoid" and dequantized(n.input[0]) and n.output[0] not in graph_outputs:
            nodes += sigmoid(n.input[0], n.output[0], base)
            counts["sigmoid"] += 1
        elif (n.op_type == "HardSigmoid" and dequantized(n.input[0]) and _is_hard_sigmoid(n)
              and n.output[0] not in graph_outputs):
            nodes += gate(n.input[0], n.output[0], base)
            counts["hard_sigmoid"] += 1
        elif n.op_type == "ReduceMean" and dequantized(n.input[0]) and _is_spatial_mean(n, inits, ranks):
            nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=n.name))
            counts["global_average_pool"] += 1
        else:
            nodes.append(n)
    if any(counts.values()):
        graph.initializer.extend(nh.from_array(np.asarray(v), names[k]) for k, v in consts.items())
        del graph.node[:]
        graph.node.extend(nodes)
    return counts


def _is_hard_sigmoid(node) -> bool:
    alpha, beta = g.attr(node, "alpha", 0.2), g.attr(node, "beta", 0.5)
    return abs(alpha - HARD_SIGMOID[0]) < 1e-6 and abs(beta - HARD_SIGMOID[1]) < 1e-6


def _ranks(model) -> dict[str, int]:
    """Rank of each tensor that shape inference knows."""
    inferred = g.onnx_mod().shape_inference.infer_shapes(model)
    g_ = inferred.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g_.value_info, *g_.input]
            if v.type.tensor_type.HasField("shape")}


def _is_spatial_mean(node, inits, ranks: dict[str, int]) -> bool:
    """ReduceMean over H and W of a tensor known to be NCHW, keeping the dims (what
    GlobalAveragePool computes)."""
    if g.attr(node, "keepdims", 1) != 1 or ranks.get(node.input[0]) != 4:
        return False
    if len(node.input) > 1 and node.input[1]:  # opset 18: axes is an input
        if node.input[1] not in inits:
            return False
        axes = g.to_array(inits[node.input[1]]).tolist()
    else:
        axes = g.attr(node, "axes", None)
    return axes is not None and sorted(int(a) for a in axes) in ([2, 3], [-2, -1])
