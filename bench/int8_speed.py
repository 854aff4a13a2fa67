"""Speed of INT8 artifacts side by side, on the runtime each is delivered for (issue 20).

Used by ``bench/int8_peers.py --latency``: every ONNX (FP32, edgekit's shared Q/DQ graph,
edgekit's ONNX Runtime form, ONNX Runtime ``quantize_static``) is timed on ONNX Runtime, and
the OpenVINO models (FP32, edgekit's shared Q/DQ graph as OpenVINO reads it, NNCF's) on
OpenVINO; each group in interleaved rounds (``edgekit.bench.timing.time_runners``), so that load
from other processes falls on all of them alike. Ratios are against FP32 on the same runtime,
measured in the same rounds (``paired_ratio``): compare them, not milliseconds across sessions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

THREADS = int(os.environ.get("H19_THREADS", "2"))


class OpenVinoModel:
    """An OpenVINO model (a file or an in-memory ``ov.Model``) compiled for CPU, timed like a runner.

    Compiled as edgekit's OpenVINO target runs its artifacts (``exporters.openvino.runner``):
    the latency hint and ``INFERENCE_PRECISION_HINT=f32``. Without the hint, OpenVINO's CPU plugin
    runs the non-quantized parts of any model in bfloat16 on a processor with AVX512_BF16 or AMX
    (this project's AMD EPYC has it): "FP32" MobileNetV3-Large then read 2.0 ms where f32 takes
    3.8 ms (2026-12-05), and every ratio against it was off."""

    def __init__(self, model: Any, threads: int = THREADS, inference_precision: str = "f32"):
        self.model, self.threads, self._compiled = model, threads, None
        self.inference_precision = inference_precision

    def __enter__(self):
        import openvino as ov

        from exporters.openvino.runner import compile_config

        core = ov.Core()
        model = core.read_model(str(self.model)) if isinstance(self.model, (str, Path)) else self.model
        self._compiled = core.compile_model(model, "CPU", compile_config(core, "CPU", self.threads, "latency",
                                                                         self.inference_precision))
        self._request = self._compiled.create_infer_request()
        return self

    def __exit__(self, *exc) -> None:
        self._compiled = self._request = None

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._request.infer([next(iter(feed.values()))])
        return {"output": self._request.get_output_tensor(0).data}


def latency(onnx_paths: Mapping[str, Path], openvino_models: Mapping[str, Any], feed: Mapping[str, np.ndarray],
            seconds: float = 6.0) -> dict[str, Any]:
    """{runtime: {method: p50/p90 ms, and ``vs_fp32``: FP32's p50 over this one's}} for the
    ONNX files on ONNX Runtime and the OpenVINO models on OpenVINO (key ``fp32`` in each)."""
    import contextlib

    from edgekit.bench.timing import paired_ratio, time_runners
    from exporters.onnx.runner import OrtRunner

    groups = {"onnxruntime": {k: (lambda p=p: OrtRunner(p, threads=THREADS)) for k, p in onnx_paths.items()},
              "openvino": {k: (lambda m=m: OpenVinoModel(m)) for k, m in openvino_models.items()}}
    out: dict[str, Any] = {"threads": THREADS}
    for runtime, openers in groups.items():
        if len(openers) < 2 or "fp32" not in openers:
            continue
        with contextlib.ExitStack() as stack:
            runners = {k: stack.enter_context(make()) for k, make in openers.items()}
            times = time_runners(runners, feed, seconds=seconds * len(runners))
        row = {}
        for k, t in times.items():
            row[k] = {"p50_ms": t["p50_ms"], "p90_ms": t["p90_ms"]}
            if k != "fp32":
                # FP32 over this one: > 1 means faster than FP32
                row[k]["vs_fp32"] = round(1 / paired_ratio(times, k, "fp32")["ratio"], 3)
        out[runtime] = row
    return out
