"""Pre-flight lint: will TensorRT's ONNX parser and builder accept this graph? No GPU, no tensorrt.

Checks, each reported as ``{"level", "node", "op", "message", "rule"}``:

* **ops** — every node against the documented onnx-tensorrt operator table for the targeted
  TensorRT major version (``exporters/tensorrt/ops.py``, source noted there), custom domains,
  and the table's restrictions that the graph alone decides (pool rank and dilations, MaxPool
  indices, Resize modes, constant ``axes``/``K``/``training_mode`` inputs, ...);
* **types** — data types per operator and graph-wide (no INT16/UINT16/UINT32/UINT64/STRING/
  COMPLEX; DOUBLE is cast down; UINT8 only at the network's inputs and outputs; INT8 only
  through Q/DQ);
* **qdq** — TensorRT's explicit-quantization rules (``exporters/tensorrt/qdq.py``);
* **shapes** — only the batch dimension of an input may be symbolic (edgekit builds
  optimization profiles for the batch only);
* **opset** — inside the range the parser documents.

Sources: https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md (table and data-type
notes); the parser's own checks (onnx-tensorrt ``onnxOpImporters.cpp``, release/10.1-GA) for the
Q/DQ rules; https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
quantized-types-explicit-quantization.html for explicit quantization.
"""
from __future__ import annotations

from typing import Any

from .graph import GraphView
from .ops import NEWER_THAN_10_1, NO_TRT_TYPE, ONNX_TYPES, OPSET_RANGE, QUANTIZED, RESTRICTIONS, \
    UNSUPPORTED, VERSIONS, supported_ops
from .qdq import check_qdq, qdq_tensors

ERROR, WARNING = "error", "warning"
REDUCE_OPS = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare"}
RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
# which input carries the data type the table speaks of (default: input 0; no inputs: output 0)
TYPED_INPUT = {"Where": 1}


class Report:
    """Collects problems once each."""

    def __init__(self):
        self.items: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str, str]] = set()

    def add(self, level: str, rule: str, node: str, op: str, message: str) -> None:
        key = (level, node, message)
        if key not in self._seen:
            self._seen.add(key)
            self.items.append({"level": level, "node": node, "op": op, "message": message, "rule": rule})

    def error(self, rule: str, node: str, op: str, message: str) -> None:
        self.add(ERROR, rule, node, op, message)

    def warning(self, rule: str, node: str, op: str, message: str) -> None:
        self.add(WARNING, rule, node, op, message)


def normalize_version(version: str | int | None) -> str:
    """'10', '10.3.0', 11 -> '10' / '11'; None -> '10' (the oldest major edgekit builds for)."""
    if version is None:
        return "10"
    major = str(version).split(".")[0].strip()
    if major not in VERSIONS:
        from edgekit.errors import UsageError

        raise UsageError(f"no TensorRT operator table for version '{version}'", hint=f"choose one of {', '.join(VERSIONS)}")
    return major


def lint_onnx(model_or_path: Any, trt_version: str | int | None = "10") -> list[dict[str, Any]]:
    """Lint an ONNX file or ``ModelProto`` for TensorRT ``trt_version`` (major 10 or 11)."""
    version = normalize_version(trt_version)
    g = GraphView(model_or_path)
    report = Report()
    _check_opset(g, version, report)
    _check_inputs(g, report)
    for node in g.nodes:
        _check_node(g, node, version, report)
    check_qdq(g, report)
    _check_tensor_types(g, report)
    return report.items


def has_errors(problems: list[dict[str, Any]]) -> bool:
    return any(p.get("level") == ERROR for p in problems)


# -- graph-level -------------------------------------------------------------------------------
def _check_opset(g: GraphView, version: str, report: Report) -> None:
    lo, hi = OPSET_RANGE[version]
    if g.opset and g.opset < lo:
        report.error("opset", "<graph>", "", f"opset {g.opset} is older than TensorRT {version}.x supports "
                     f"(opset {lo} to {hi}); re-export with a newer opset")
    elif g.opset > hi:
        report.warning("opset", "<graph>", "", f"opset {g.opset} is newer than the {version}.x parser documents "
                       f"(up to {hi}); operators that changed after opset {hi} may be rejected")


def _check_inputs(g: GraphView, report: Report) -> None:
    for inp in g.inputs:
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            report.error("shapes", inp.name, "<input>", f"input '{inp.name}' has no shape: TensorRT needs its rank "
                         "and every non-batch dimension")
            continue
        for k, d in enumerate(tt.shape.dim):
            if k == 0 or d.HasField("dim_value"):
                continue
            what = f"symbolic ('{d.dim_param}')" if d.dim_param else "unknown"
            report.error("shapes", inp.name, "<input>", f"input '{inp.name}' dimension {k} is {what}: edgekit "
                         "builds TensorRT optimization profiles for the batch dimension (0) only; export "
                         "with a fixed input shape")
        t = g.type_name(inp.name)
        if t in QUANTIZED:
            report.warning("types", inp.name, "<input>", f"input '{inp.name}' is {t}: edgekit feeds FP32 images; "
                           "quantize inside the graph with QuantizeLinear instead")


# -- per node ----------------------------------------------------------------------------------
def _check_node(g: GraphView, node: Any, version: str, report: Report) -> None:
    name, op = g.name(node), node.op_type
    if node.domain not in ("", "ai.onnx"):
        report.error("ops", name, op, f"{node.domain}::{op} is a custom-domain operator: TensorRT's ONNX parser "
                     "needs a plugin for it (not in the operator table)")
        return
    table = supported_ops(version)
    if op in UNSUPPORTED:
        report.error("ops", name, op, f"{op} is not supported by the TensorRT {version}.x ONNX parser "
                     "(onnx-tensorrt operators.md)")
        return
    if op not in table:
        report.error("ops", name, op, f"{op} is not in the TensorRT {version}.x ONNX parser's operator table")
        return
    if version == "10" and op in NEWER_THAN_10_1:
        report.warning("ops", name, op, f"{op} is supported only by newer TensorRT 10.x parsers (not in the 10.1 "
                       "table); check the TensorRT version on the device")
    if op not in ("QuantizeLinear", "DequantizeLinear"):  # their types are the Q/DQ rules' business
        _check_op_types(g, node, table[op], report)
    _check_restrictions(g, node, report)


def _check_op_types(g: GraphView, node: Any, allowed: tuple[str, ...], report: Report) -> None:
    name, op = g.name(node), node.op_type
    idx = TYPED_INPUT.get(op, 0)
    tensor = node.input[idx] if len(node.input) > idx else (node.output[0] if node.output else "")
    types = [g.type_name(tensor)] if tensor else []
    if op in ("Cast", "CastLike"):
        to = g.attr(node, "to")
        if to is not None:
            types.append(ONNX_TYPES.get(to, f"type {to}"))
    for t in types:
        if t is None or t == "DOUBLE" or t in NO_TRT_TYPE:  # DOUBLE and type-less types: the graph-wide check
            continue
        if t not in allowed:
            report.error("types", name, op, f"{op} does not take {t} tensors in TensorRT "
                         f"(supported: {', '.join(allowed)})")


def _check_restrictions(g: GraphView, node: Any, report: Report) -> None:
    name, op = g.name(node), node.op_type

    def err(message: str) -> None:
        report.error("ops", name, op, message)

    if op in ("AveragePool", "MaxPool", "LpPool"):
        kernel = g.attr(node, "kernel_shape") or []
        if op != "LpPool" and len(kernel) not in (2, 3):
            err(f"{op} with a {len(kernel)}D kernel: TensorRT supports 2D or 3D pooling only")
        if any(d != 1 for d in (g.attr(node, "dilations") or [])):
            err(f"{op} with dilations {list(g.attr(node, 'dilations'))}: {RESTRICTIONS[op]}")
        if op == "MaxPool" and len(node.output) > 1 and g.used(node.output[1]):
            err("MaxPool's Indices output is used: TensorRT does not support it")
    elif op == "Constant":
        bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
        if bad:
            err(f"Constant with {bad[0]}: {RESTRICTIONS['Constant']}")
    elif op == "CumSum" and len(node.input) > 1 and not g.is_const(node.input[1]):
        err("CumSum's axis is not a build-time constant")
    elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
        value = g.const(node.input[2])
        if value is None or bool(value.reshape(-1)[0]):
            err(f"Dropout in training mode: {RESTRICTIONS['Dropout']}")
    elif op == "LayerNormalization" and any(g.used(o) for o in node.output[1:]):
        err(f"LayerNormalization's Mean/InvStdDev outputs are used: {RESTRICTIONS['LayerNormalization']}")
    elif op == "Resize":
        _check_resize(g, node, err)
    elif op == "ScatterND" and g.attr(node, "reduction", "none") != "none":
        err(f"ScatterND with reduction '{g.attr(node, 'reduction')}': {RESTRICTIONS['ScatterND']}")
    elif op == "TopK":
        if g.attr(node, "sorted", 1) == 0:
            err("TopK with sorted=0: TensorRT requires sorted=1")
        k = g.const(node.input[1]) if len(node.input) > 1 else None
        if k is not None and int(k.reshape(-1)[0]) >= 3840:
            err(f"TopK with K={int(k.reshape(-1)[0])}: K must be less than 3840")
    elif op in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and node.input[1] and not g.is_const(node.input[1]):
        err(f"{op}'s axes are not a build-time constant: {RESTRICTIONS[op]}")
    elif op in REDUCE_OPS and len(node.input) > 1 and node.input[1] and not g.is_const(node.input[1]):
        err(f"{op}'s axes are not a build-time constant: {RESTRICTIONS['Reduce*']}")


def _check_resize(g: GraphView, node: Any, err) -> None:
    mode = g.attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        err(f"Resize mode '{mode}': TensorRT supports nearest and linear")
    coord = g.attr(node, "coordinate_transformation_mode", "half_pixel")
    if coord not in RESIZE_COORD_MODES:
        err(f"Resize coordinate_transformation_mode '{coord}': TensorRT supports {', '.join(sorted(RESIZE_COORD_MODES))}")
    if g.attr(node, "antialias", 0):
        err("Resize with antialias=1: TensorRT does not support antialiasing")
    policy = g.attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        err(f"Resize keep_aspect_ratio_policy '{policy}': TensorRT supports stretch only")


# -- graph-wide data types ---------------------------------------------------------------------
def _check_tensor_types(g: GraphView, report: Report) -> None:
    qdq = qdq_tensors(g)
    io = g.input_names | g.output_names
    for tensor in sorted(set(g.types) | set(g.producer)):
        t = g.type_name(tensor)
        if t is None:
            continue
        node = g.producer.get(tensor)
        where, op = (g.name(node), node.op_type) if node is not None else (tensor, "<input>" if tensor in
                                                                             g.input_names else "<initializer>")
        if t in NO_TRT_TYPE or t.startswith("type "):
            report.error("types", where, op, f"tensor '{tensor}' is {t}: TensorRT has no such data type")
        elif t == "DOUBLE":
            report.warning("types", where, op, f"tensor '{tensor}' is DOUBLE: TensorRT casts it down to FLOAT "
                           "(values clamped to +-FLT_MAX)")
        elif t == "UINT8" and tensor not in io and tensor not in qdq:
            report.error("types", where, op, f"tensor '{tensor}' is UINT8 inside the network: TensorRT allows "
                         "UINT8 only as a network input or output")
        elif t in QUANTIZED and tensor not in qdq and tensor not in g.input_names:
            report.error("types", where, op, f"tensor '{tensor}' is {t} outside a Q/DQ pair: TensorRT treats {t} "
                         "as a quantized type, reachable only through QuantizeLinear/DequantizeLinear")
