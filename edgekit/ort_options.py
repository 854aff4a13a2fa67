"""The ONNX Runtime session settings every edgekit session uses, and that a deployment of an
INT8 ONNX artifact needs.

``session.x64quantprecision = 1``. On x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without
VNNI: Intel before Cascade Lake / Ice Lake, AMD before Zen 4) ONNX Runtime's fast u8×s8 integer
kernels add pairs of products in saturating 16-bit lanes (``vpmaddubsw``): 255 · 127 · 2 does
not fit, and the result is wrong, not slightly off. This key makes ONNX Runtime convert those
operators to its exact u8×u8 kernels where the weights leave [-64, 63]; where VNNI exists the
results are the same without it, and it costs time (below). Source: ``kOrtSessionOptionsAvx2PrecisionMode`` in ONNX Runtime's
``include/onnxruntime/core/session/onnxruntime_session_options_config_keys.h`` (and PR #12088,
"x86/64 U8S8 Gemm Precision Fix").

Measured on this project's AMD EPYC without VNNI (ONNX Runtime 1.32, 2026-12-06): the ONNX Runtime
INT8 form of the test suite's swish network read 37.5 dB against FP32 without the key and 59.7 dB
with it (56.5 dB on an AVX-512 VNNI Xeon without it).

**Models that need no key** (:func:`kernel_exact`, 2026-12-07). The exact kernels are slow: on
that EPYC, MobileNetV3-Large's INT8 form ran at 0.89× FP32 with the key. The fast kernels are
exact too when no pair they add can overflow: each weight's integers, flattened per output channel
in the order ONNX Runtime's x86 kernels read them, hold |a| + |b| <= 128 for every pair (2k, 2k+1)
(255 · 128 = 32640 fits). Measured on that EPYC with adversarial weights and all-255 inputs
(tests/exporters/onnx/test_int8_precision.py): a convolution's K order is (kh, kw, input channel)
in each group (so a 3-channel 3×3 kernel pairs across taps); a MatMul or Gemm pairs K rows;
depthwise convolutions never saturate; signed and unsigned activations alike. Calibrated with
paired weights (``--ort-int8-weights``), the INT8 forms of MobileNetV3-Large, EfficientNet-B0,
ShuffleNetV2 and pretrained Lite0 computed the same bits with and without the key and ran at
1.15×, 1.17×, 1.48× and 1.05× FP32 without it (0.89×, 0.96×, 1.43×, 0.87× with it). Such a model's
sessions leave the key out (:func:`session_config`).

**CPUs with VNNI need no key, and pay for it** (2026-12-08). :func:`session_config` says what a
deployment on an x86 CPU without VNNI needs (the manifest records it); :func:`apply` sets it only
where this CPU is one (:func:`needed_here`). On an AMD EPYC with AVX-512 VNNI (Zen 4) the key made
MobileNetV3-Large's full-weight INT8 form 1.8× slower (5.9 against 3.3 ms) with the same bits.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}
PAIR_BUDGET = 128   # 255 · 128 = 32640 <= 32767 (calibration.qdq.PAIR_BUDGET holds the weights to it)

# op -> (input index of the integer weight, how its K axis is laid out)
_INTEGER_OPS = {"QLinearConv": (3, "conv"), "ConvInteger": (1, "conv"), "QLinearMatMul": (3, "matmul"),
                "MatMulInteger": (1, "matmul"), "QGemm": (3, "gemm")}
_FLOAT_OPS = {"Conv": "conv", "MatMul": "matmul", "Gemm": "gemm"}   # weight input 1, through a DequantizeLinear


def apply(so: Any, model: Any = None) -> Any:
    """Add the session config ``model`` needs on this CPU to an ``onnxruntime.SessionOptions``;
    returns it. On an x86 CPU without VNNI that is :func:`session_config` (every key when no model is
    given); elsewhere nothing, because there the fast kernels are exact and the key only costs time
    (:func:`needed_here`)."""
    if not needed_here():
        return so
    for key, value in (SESSION_CONFIG if model is None else session_config(model)).items():
        so.add_session_config_entry(key, value)
    return so


@lru_cache(maxsize=1)
def needed_here() -> bool:
    """Whether this CPU's u8×s8 kernels saturate (x86 without VNNI), so that sessions need the key.
    With VNNI (``vpdpbusd`` adds into 32 bits) or on ARM they compute the same integers without it,
    and the key is not free: measured on an AMD EPYC (Zen 4, AVX-512 VNNI, ONNX Runtime 1.32,
    2026-12-08), MobileNetV3-Large's INT8 form ran 3.3 ms without the key and 5.9 ms with it, with
    bit-identical outputs (tests/exporters/onnx/test_int8_precision.py checks the bits on such CPUs)."""
    from edgekit.bench.device import int8_saturates

    return int8_saturates()


def session_config(model: Any) -> dict[str, str]:
    """What a session of ``model`` (path or ModelProto) needs: nothing when :func:`kernel_exact`,
    else :data:`SESSION_CONFIG`."""
    if isinstance(model, (str, Path)):
        st = Path(model).stat()
        exact = _file_exact(str(model), st.st_mtime_ns, st.st_size)
    else:
        exact = kernel_exact(model)
    return {} if exact else dict(SESSION_CONFIG)


@lru_cache(maxsize=64)
def _file_exact(path: str, mtime_ns: int, size: int) -> bool:
    """:func:`kernel_exact` of a file, once per version of it (a stage is opened many times). A file
    that names no quantized operator is not parsed (a float model computes the same either way, and
    a 500 MB VGG would take seconds): it gets the key, as every session had before."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if not any(data.find(op.encode()) >= 0 for op in ("DequantizeLinear", *_INTEGER_OPS)):
                return False
        return kernel_exact(path)
    except Exception:  # noqa: BLE001 - empty or corrupt: keep the key, and let ONNX Runtime say what is wrong
        return False


def kernel_exact(model: Any) -> bool:
    """Whether ONNX Runtime's fast u8×s8 kernels compute every integer layer of ``model`` exactly on
    x86 CPUs without VNNI: each int8 weight (of an integer operator, or read by a Conv / MatMul /
    Gemm through a DequantizeLinear) holds |a| + |b| <= 128 for the pairs the kernels add (module
    docstring). A model without such weights is exact; a weight that is not a constant is not."""
    import onnx
    from onnx import numpy_helper

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type in _INTEGER_OPS:
            index, layout = _INTEGER_OPS[node.op_type]
            weight = node.input[index] if len(node.input) > index else ""
        elif node.op_type in _FLOAT_OPS and len(node.input) > 1:
            dq = made_by.get(node.input[1])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue   # a float weight: no integer kernel
            layout, weight = _FLOAT_OPS[node.op_type], dq.input[0]
        else:
            continue
        t = inits.get(weight)
        if t is None:
            return False
        if t.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            continue
        if t.data_type == onnx.TensorProto.UINT8 or not pairs_fit(numpy_helper.to_array(t), layout, _attr(node)):
            return False   # uint8 weights: the u8×u8 kernels (no pairing rule checked here)
    return True


def kernel_rows(w: np.ndarray, layout: str, attrs: dict[str, int] | None = None) -> np.ndarray | None:
    """The weight as rows of K in the order ONNX Runtime's x86 kernels read them (one row per output
    channel), or None for a depthwise convolution (its kernels multiply in 32 bits). ``attrs``: the
    node's ``group`` (conv) or ``transB`` (gemm)."""
    attrs = attrs or {}
    if layout == "conv":
        if w.ndim < 3:
            return w.reshape(w.shape[0], -1)
        if w.shape[1] == 1 and w.shape[0] == attrs.get("group", 1):
            return None
        return np.moveaxis(w.reshape(w.shape[0], w.shape[1], -1), 1, 2).reshape(w.shape[0], -1)
    if layout == "gemm" and attrs.get("transB", 0):
        return w
    return w.reshape(w.shape[0], -1).T   # MatMul / Gemm B is (K, N)


def pairs_fit(w: np.ndarray, layout: str = "conv", attrs: dict[str, int] | None = None) -> bool:
    """Whether integer weight ``w`` holds |a| + |b| <= :data:`PAIR_BUDGET` for every pair ONNX Runtime's
    fast x86 kernels add in 16 bits (:func:`kernel_rows`)."""
    rows = kernel_rows(w, layout, attrs)
    if rows is None:
        return True
    a = np.abs(rows.astype(np.int32))
    n = a.shape[1] // 2 * 2
    return bool((a[:, 0:n:2] + a[:, 1:n:2] <= PAIR_BUDGET).all())


def _attr(node: Any) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.name in ("group", "transB")}
