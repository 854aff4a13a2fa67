"""FP32 ONNX → FP16 ONNX: FP16 weights and compute, FP32 at the boundary.

The graph transform is ONNX Runtime's own ``onnxruntime.transformers.float16``
converter (shipped in the onnxruntime wheel): every float initializer and tensor
becomes float16, ``Cast`` nodes are inserted at the graph inputs/outputs
(``keep_io_fp32``) and around the operators kept in FP32. TensorRT's strongly typed
networks take their precision from exactly these types (DESIGN §4).

Kept in FP32 by default (``DEFAULT_KEEP_FP32``): operators whose intermediate values
overflow FP16's 65504 or lose too much precision in a 10-bit mantissa — exponentials
and powers, large reductions (sums, products, norms), softmax, normalisations that
compute a variance. Convolutions, GEMMs, pointwise activations, pooling and the
ReduceMean of global pooling are FP16: on the zoo's CNNs their activations stay
well inside the FP16 range (EfficientNet-Lite0: max |x| ≈ 62), and parity against
FP32 measures the result (cosine ≥ 0.999 expected).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.artifact import Artifact, tool_versions
from edgekit.errors import ExportError, first_line, require

from .graph import toposort

DEFAULT_KEEP_FP32: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Erf",
    "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
    "CumSum", "LpNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "Range", "TopK", "NonMaxSuppression", "RoiAlign",
)
DEFAULT = DEFAULT_KEEP_FP32
FP16_MAX = 65504.0


def convert_fp16(src: Artifact, path: Path, keep_io_fp32: bool = True,
                 keep_fp32_ops: tuple[str, ...] = DEFAULT_KEEP_FP32) -> Artifact:
    """Write the FP16 version of the ONNX stage ``src`` to ``path``."""
    onnx = require("onnx", "onnx")
    require("onnxruntime", "onnx", "FP16 conversion")
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - depends on the onnxruntime build
        raise ExportError("fp16", f"onnxruntime's float16 converter is not available: {exc}",
                          hint="install the full onnxruntime wheel: pip install 'edgekit[onnx]'") from None
    t0 = time.perf_counter()
    model = onnx.load(str(src.path))
    overflow = _out_of_range_weights(model)
    kept = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node) if n.op_type in keep_fp32_ops]
    try:
        converted = convert_float_to_float16(model, keep_io_types=keep_io_fp32, op_block_list=list(keep_fp32_ops),
                                             disable_shape_infer=False)
        toposort(converted)  # the converter appends its boundary Casts at the end
        onnx.checker.check_model(converted)
    except Exception as exc:
        msg = first_line(exc, None)
        raise ExportError("fp16", f"FP16 conversion failed: {msg[:300]}") from exc
    onnx.save(converted, str(path))
    types = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in converted.graph.initializer)
    meta = {
        "keep_io_fp32": keep_io_fp32,
        "keep_fp32_ops": list(keep_fp32_ops),
        "kept_fp32_nodes": kept,
        "initializer_types": dict(types),
        "weights_clamped_to_fp16_range": overflow,
        "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
        "converter": "onnxruntime.transformers.float16",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return Artifact(path=path, stage="fp16", format="onnx", precision="fp16", target="onnx", inputs=src.inputs,
                    outputs=tuple(o.name for o in converted.graph.output), parent=src.sha256, meta=meta,
                    tools=tool_versions("onnx", "onnxruntime"))


def _out_of_range_weights(model) -> int:
    """Number of float weights whose magnitude FP16 cannot hold (they are clamped)."""
    from onnx import TensorProto, numpy_helper

    n = 0
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(t)
            n += int((np.abs(a) > FP16_MAX).sum())
    return n
