"""Emulated aarch64 parity (edgekit.arm, issue 24): runs for real where 'edgekit arm setup' has built
the userland and we are root; elsewhere it is skipped with the reason.

.ci/run builds the userland in the background while the suite runs, and these tests wait for it
(EDGEKIT_ARM_SETUP_PID). They live in a file of their own with two tests: pytest-xdist hands out
files with the most tests first, so this one comes near the end of the run, by when the build has
finished, instead of holding a worker idle while it waits.
"""
from __future__ import annotations

import pytest

from edgekit.arm import prereq
from tests.conftest import wait_for_background


def _userland_reason() -> str | None:
    from edgekit.arm.setup import Userland

    gaps = prereq.missing(building=False)
    if gaps:
        return "aarch64 emulation unavailable: " + "; ".join(g.what for g in gaps)
    land = Userland.default()
    if not land.ready or "onnxruntime" not in land.runtimes():
        return f"aarch64 userland not set up at {land.folder} (run 'edgekit arm setup')"
    return None


@pytest.fixture
def userland():
    wait_for_background("EDGEKIT_ARM_SETUP_PID")
    reason = _userland_reason()
    if reason is not None:
        pytest.skip(reason)


needs_userland = pytest.mark.usefixtures("userland")
FOCUS = "mobilenet_v3_small"
SHAPE = (1, 3, 64, 64)
CROPS = 4


def _export(tmp_path, precision: str, cpus: tuple[str, ...]):
    from edgekit.console import Console
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import export

    req = ExportRequest(model=FOCUS, target="onnx", precision=precision, input_shape=SHAPE,
                        out=tmp_path / precision, samples=8, bench=False, threads=1, arch="aarch64",
                        arm_cpus=cpus, arm_samples=CROPS)
    return export(req, Console(quiet=True))


def _rows(result):
    return {(c.stage, c.runner.rsplit("/", 1)[-1]): c for c in result.comparisons if "aarch64" in c.stage}


@needs_userland
def test_fp32_is_identical_across_instruction_sets(tmp_path):
    result = _export(tmp_path, "fp32", ("cortex-a76",))
    rows = _rows(result)
    fid = rows[("simplified x86↔aarch64", "cortex-a76")]
    vs_torch = rows[("simplified@aarch64", "cortex-a76")]
    o = fid.primary()
    print(f"\nFP32 x86↔aarch64 ({FOCUS} 64 px, {CROPS} crops): max_abs {o.max_abs:.2e}, cosine {o.cosine:.8f}")
    assert o.samples == CROPS and o.max_abs <= 1e-4 and fid.passed
    assert vs_torch.passed and vs_torch.primary().max_abs <= 1e-4
    assert "asimddp" in fid.note and "UDOT/SDOT" in fid.note  # the log names the kernels it saw
    assert any(c["stage"] == "simplified x86↔aarch64" for c in result.manifest.parity)


@needs_userland
def test_int8_fidelity_is_reported_on_a_core_without_dot_product(tmp_path):
    """Cortex-A53 (no dot-product: ONNX Runtime's widening-NEON INT8 kernels; the FP32 test above runs
    Cortex-A76 with UDOT/SDOT). One core only: CI time; bench/arm_matrix.py runs the full matrix."""
    result = _export(tmp_path, "int8", ("cortex-a53",))
    rows = _rows(result)
    for stage in ("qdq", "ort"):
        fid = rows[(f"{stage} x86↔aarch64", "cortex-a53")]
        o = fid.primary()
        print(f"\nINT8 {stage} x86↔aarch64 on cortex-a53 ({FOCUS} 64 px, {CROPS} crops): SQNR {o.sqnr_db:.1f} dB, "
              f"cosine {o.cosine:.5f}, top-1 {o.top1:.0%}")
        assert o.samples == CROPS and o.nonfinite == 0
        assert o.cosine >= 0.99 and o.sqnr_db >= 20.0, fid.failures  # the fidelity floor (arm/compare.py)
        assert "no dot-product" in fid.note and "asimddp" not in fid.note
        assert rows[(f"{stage}@aarch64", "cortex-a53")].primary().samples == CROPS
    fp32 = rows[("simplified x86↔aarch64", "cortex-a53")]  # the graph it was quantized from, same run
    assert fp32.precision == "fp32" and fp32.primary().max_abs <= 1e-4 and fp32.passed
