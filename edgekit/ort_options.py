"""The ONNX Runtime session settings every edgekit session uses, and that a deployment of an
INT8 ONNX artifact needs.

``session.x64quantprecision = 1``. On x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without
VNNI: Intel before Cascade Lake / Ice Lake, AMD before Zen 4) ONNX Runtime's fast u8×s8 integer
kernels add pairs of products in saturating 16-bit lanes (``vpmaddubsw``): 255 · 127 · 2 does
not fit, and the result is wrong, not slightly off. This key makes ONNX Runtime convert those
operators to its exact u8×u8 kernels where the weights leave [-64, 63]; where VNNI exists it
changes nothing. Source: ``kOrtSessionOptionsAvx2PrecisionMode`` in ONNX Runtime's
``include/onnxruntime/core/session/onnxruntime_session_options_config_keys.h`` (and PR #12088,
"x86/64 U8S8 Gemm Precision Fix").

Measured on this project's AMD EPYC without VNNI (ONNX Runtime 1.32, 2026-12-06): the ONNX Runtime
INT8 form of the test suite's swish network read 37.5 dB against FP32 without the key and 59.7 dB
with it (56.5 dB on an AVX-512 VNNI Xeon without it).
"""
from __future__ import annotations

from typing import Any

SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}


def apply(so: Any) -> Any:
    """Add :data:`SESSION_CONFIG` to an ``onnxruntime.SessionOptions``; returns it."""
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    return so
