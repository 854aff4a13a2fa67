"""Small ONNX graph helpers shared by quantization, FP16 conversion and localization.

Everything here works on an ``onnx.ModelProto`` (imported lazily by the callers) and
plain Python data: producer / consumer maps, which nodes carry a constant weight,
exposing intermediate tensors as extra graph outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import require

# Operators whose weight input is quantized per channel; value = (weight input index).
WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass(frozen=True)
class QuantTarget:
    """One weighted node to quantize: its activation input and constant weight."""

    node: str            # node name (unique, see ensure_node_names)
    op: str
    activation: str      # tensor name of input 0
    weight: str          # initializer name
    axis: int            # per-channel axis of the weight (its output channels)
    group: int = 1

    @property
    def depthwise(self) -> bool:
        return self.op == "Conv" and self.group > 1


def onnx_mod():
    return require("onnx", "onnx")


def load(path: Path):
    return onnx_mod().load(str(path))


def ensure_node_names(model) -> None:
    """Give every node a unique, stable name (exporters sometimes leave them empty)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        n.name = name
        seen.add(name)


def named_copy(model):
    """A copy of ``model`` whose nodes all have unique names (the graph rewriters' start)."""
    m = onnx_mod().ModelProto()
    m.CopyFrom(model)
    ensure_node_names(m)
    return m


def safe_name(name: str) -> str:
    """``name`` usable as a prefix of new tensor and node names."""
    return name.replace(":", "_").replace("/", "_").strip("_") or "t"


class GraphIndex:
    """One index of a model's main graph, shared by the passes that rewrite it (the ONNX Runtime
    INT8 form) and by the TensorRT lint's :class:`GraphView`: the initializers, each tensor's
    producer, its consumers (the graph's outputs are listed with none) and its uses as (node,
    input slot). A pass that rewrites the graph leaves the index stale; :meth:`refresh` rebuilds
    it (the ORT form's pass runner does after every pass)."""

    def __init__(self, model):
        self.model = model
        self.refresh()

    def refresh(self) -> "GraphIndex":
        graph = self.model.graph
        self.inits: dict[str, Any] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        self.uses: dict[str, list[tuple[Any, int]]] = {}
        for n in graph.node:
            for o in n.output:
                if o:  # an unused optional output is ''
                    self.producer[o] = n
            for k, i in enumerate(n.input):
                if i:
                    self.consumers.setdefault(i, []).append(n)
                    self.uses.setdefault(i, []).append((n, k))
        for o in graph.output:
            self.consumers.setdefault(o.name, [])
        return self


def initializers(model) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def producers(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model) -> dict[str, list[Any]]:
    return GraphIndex(model).consumers


def quantized_by_all_users(name: str, cons: dict[str, list[Any]]) -> bool:
    """True when ``name`` is read, and only by QuantizeLinear nodes."""
    users = cons.get(name, [])
    return bool(users) and all(u.op_type == "QuantizeLinear" for u in users)


def set_initializer(inits: dict[str, Any], name: str, value: np.ndarray) -> None:
    """Replace the initializer ``name`` with ``value`` (its new contents, shape and dtype)."""
    inits[name].CopyFrom(onnx_mod().numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d scalars 0-d


def set_int_attr(node, name: str, value: int) -> None:
    """Set an existing integer attribute (a Conv's ``group``) in place."""
    for a in node.attribute:
        if a.name == name:
            a.i = value


def per_tensor(node, op: str, inits: dict[str, Any]) -> bool:
    """``node`` is a QuantizeLinear/DequantizeLinear (``op``) with one constant scale and zero point."""
    return node.op_type == op and all(x in inits and to_array(inits[x]).size == 1 for x in node.input[1:3])


def inferred_dims(model) -> dict[str, list[int]]:
    """Each tensor's dimensions as ONNX shape inference gives them (0 where it does not know one)."""
    inferred = onnx_mod().shape_inference.infer_shapes(model)
    return {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input)}


def attr(node, name: str, default: Any = None) -> Any:
    helper = onnx_mod().helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def to_array(tensor) -> np.ndarray:
    return onnx_mod().numpy_helper.to_array(tensor)


def weight_axis(node, weight: np.ndarray) -> int | None:
    """The output-channel axis of a weighted node's weight, as TensorRT expects it for
    per-channel scales: K (axis 0) for Conv, the output-column axis for Gemm/MatMul."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":  # weight (C_in, C_out/group, k...): output channels on axis 1
        return 1 if attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return weight.ndim - 1 if weight.ndim == 2 else None
    return None


def quant_targets(model) -> list[QuantTarget]:
    """Weighted nodes whose weight is a float initializer and whose activation is not."""
    inits = initializers(model)
    out = []
    for n in model.graph.node:
        idx = WEIGHTED_OPS.get(n.op_type)
        if idx is None or len(n.input) <= idx:
            continue
        act, w = n.input[0], n.input[idx]
        if w not in inits or act in inits:
            continue
        t = inits[w]
        if t.data_type != onnx_mod().TensorProto.FLOAT:
            continue
        arr = to_array(t)
        if n.op_type == "Gemm" and attr(n, "transA", 0):
            continue
        axis = weight_axis(n, arr)
        if axis is None:
            continue
        out.append(QuantTarget(n.name, n.op_type, act, w, axis, int(attr(n, "group", 1) or 1)))
    return out


NONNEG_SOURCES = ("Relu", "Sigmoid", "HardSigmoid", "Softmax")
NONNEG_PASS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Squeeze",
               "Unsqueeze", "Transpose", "Identity", "ReduceMean", "ReduceMax", "Concat", "Mul")


def nonnegative_tensors(model) -> set[str]:
    """Tensors that are never negative for any input, by construction of the graph: outputs of
    ReLU, ``Clip(lo >= 0, ...)`` and the gates, and what pools, reshapes, concatenates or
    multiplies only such tensors. The calibration data play no part (a tensor merely *seen*
    non-negative could go negative on another photo)."""
    inits = initializers(model)
    nonneg: set[str] = set()
    for n in model.graph.node:  # topological order (ONNX requires it)
        op = n.op_type
        if op in NONNEG_SOURCES:
            ok = True
        elif op == "Clip":
            lo = attr(n, "min", None)
            if len(n.input) > 1 and n.input[1]:
                lo = float(to_array(inits[n.input[1]])) if n.input[1] in inits else None
            ok = lo is not None and float(lo) >= 0
        elif op in NONNEG_PASS:
            data = [i for i in n.input[:1]] if op not in ("Concat", "Mul") else [i for i in n.input if i]
            ok = bool(data) and all(i in nonneg or (i in inits and (to_array(inits[i]) >= 0).all()) for i in data)
        else:
            ok = False
        if ok:
            nonneg.add(n.output[0])
    return nonneg


def float_tensors(model) -> set[str]:
    """Names of tensors known (after shape inference) to be float32."""
    onnx = onnx_mod()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort
        inferred = model
    f = onnx.TensorProto.FLOAT
    names = {v.name for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
             if v.type.tensor_type.elem_type == f}
    return names


def with_outputs(model, names: list[str]):
    """A copy of ``model`` that also outputs the named float tensors (existing outputs kept)."""
    onnx = onnx_mod()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            have.add(name)
    return m


def session(model_or_path, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session for a model held in memory or on disk."""
    from edgekit import ort_options

    ort = require("onnxruntime", "onnx", "calibration")
    so = ort_options.apply(ort.SessionOptions())   # exact integer kernels on x86 without VNNI
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def infer_fn(model_or_path, threads: int | None = None):
    """``infer(feed) -> {output: float32 array}`` on one ONNX Runtime CPU session. Calibration runs
    its graphs itself, so that it never needs a target's runner (tests/edgekit/test_boundaries.py)."""
    sess = session(model_or_path, threads)
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}

    def infer(feed):
        outs = sess.run(names, {k: np.asarray(v, dtype=np.float32) for k, v in feed.items() if k in inputs})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs)}

    return infer


def toposort(model) -> None:
    """Reorder the main graph's nodes topologically, in place (stable where possible).

    Converters that append the Casts they insert at the end of the node list produce
    graphs that ONNX's checker (and some runtimes) reject."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the rest as it was
            ordered.extend(rest)
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
