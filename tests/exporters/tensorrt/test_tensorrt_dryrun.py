"""`edgekit export MODEL --target tensorrt --int8 --dry-run` for every focus model, on a machine
without TensorRT: the Q/DQ ONNX that TensorRT would build, its CPU parity table and a lint
report with zero errors (issue 8). Small inputs and 64 calibration samples keep it quick; the
graph structure (and so the lint verdict) does not depend on either. 96×96 is the size the
OpenVINO focus tests export these networks at, so the suite's export cache can serve the ONNX
export (a 32×32 input would let the simplifier fold layers whose maps shrink to 1×1)."""
from __future__ import annotations

import math

import onnx
import pytest

pytest.importorskip("onnxruntime", reason="the dry run's parity needs onnxruntime (pip install 'edgekit[onnx]')")
pytest.importorskip("onnxsim", reason="the dry run simplifies with onnxsim (pip install 'edgekit[onnx]')")

from edgekit.artifact import Manifest  # noqa: E402
from edgekit.models import list_specs  # noqa: E402

# one network per focus family and version (width variants share their graph structure)
FOCUS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1_g3",
         "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_lite0", "efficientnet_v2_s"]


def test_every_focus_family_is_covered():
    focus = {s.name for s in list_specs() if s.focus}
    assert set(FOCUS) <= focus
    variant = ("small", "large", "_s", "_m", "_l")    # MobileNetV3 sizes, EfficientNetV2 S/M/L
    families = {n.rsplit("_", 1)[0] if n[-1].isdigit() or n.endswith(variant) else n for n in focus}
    assert all(any(m.startswith(f.split("_x")[0]) for m in FOCUS) for f in families), families


# CI (EDGEKIT_FAST=1) leaves out EfficientNetV2-S (its calibration), MobileNetV3-Small (MobileNetV3-
# Large's blocks at other widths, 12 s), EfficientNet-Lite0 (B0's MBConv without squeeze-excite,
# with MobileNetV2's ReLU6: no operator the other two lack, 26 s) and MobileNetV1 (depthwise and
# pointwise convolutions with ReLU and no residual: MobileNetV3-Large's ReLU blocks without their
# extras, 27 s); plain `make test` runs them.
CI_LEAVES_OUT = {"efficientnet_v2_s", "mobilenet_v3_small", "efficientnet_lite0", "mobilenet_v1"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in CI_LEAVES_OUT else n
                                  for n in FOCUS])
def test_int8_dry_run_gives_qdq_onnx_parity_and_clean_lint(name, tmp_path, edgekit_cli, monkeypatch):
    """The real command in its own process, as a user runs it (a fresh interpreter per model also
    keeps the suite's earlier backends out of its way). A loose INT8 cosine keeps the float
    fallback out: this test is about the graph TensorRT gets and its lint; the gate and its
    fallback are tested in test_calibration.py."""
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / name
    r = edgekit_cli("export", name, "--target", "tensorrt", "--int8", "--dry-run", "--out", str(out),
                    "--input-shape", "1x3x96x96", "--samples", "8", "--calib-samples", "64", "--no-bench",
                    "--tol", "cosine=0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parity" in r.stdout + r.stderr and "Traceback" not in r.stderr
    manifest = Manifest.read(out)
    stages = manifest.stages
    assert stages[-1].stage == "qdq" and stages[-1].precision == "int8"
    assert stages[-1].meta["calibration"]["samples"] == 64   # --calib-samples
    qdq = onnx.load(str(out / stages[-1].path.name))
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    # the lint report: real rules ran on the real graph, and none is an error
    lint = manifest.reports["lint"]
    assert [p for p in lint if p.get("level") == "error"] == []
    assert manifest.reports["dry_run"] is True
    # the CPU parity table: a row per stage, numbers that are real
    parity = manifest.parity
    assert [c["stage"] for c in parity] == [s.stage for s in stages]
    for c in parity:
        o = c["outputs"][0]
        assert o["samples"] >= 8 and o["nonfinite"] == 0 and math.isfinite(o["cosine"])
    fp32 = [c for c in parity if c["precision"] == "fp32"]
    assert fp32 and all(c["passed"] for c in fp32), [c["failures"] for c in fp32]
    # the INT8 stage's parity against torch agrees with the gate the calibration measured (vs FP32 ONNX)
    assert abs(parity[-1]["outputs"][0]["cosine"] - stages[-1].meta["gate"]["after"]["cosine"]) < 0.02
    assert not any(f.suffix in (".engine", ".plan") for f in out.iterdir())
