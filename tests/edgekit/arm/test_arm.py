"""The emulated aarch64 runner (edgekit.arm, issue 24).

The prerequisite checks run everywhere on a fake Host (edgekit's own seam: euid, binfmt folder,
which). The emulated parity runs for real where 'edgekit arm setup' has built the userland and we
are root; elsewhere it is skipped with the reason. .ci/run builds the userland in the background
while the suite runs; these tests wait for it (EDGEKIT_ARM_SETUP_PID).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgekit.arm import prereq
from edgekit.arm.prereq import Host
from edgekit.errors import UnavailableError

ALL_TOOLS = {"qemu-aarch64-static": "/usr/bin/qemu-aarch64-static", "debootstrap": "/usr/sbin/debootstrap"}


def _binfmt(tmp_path: Path, flags: str | None = "PF") -> Path:
    d = tmp_path / "binfmt_misc"
    d.mkdir()
    (d / "register").write_text("")
    if flags is not None:
        (d / "qemu-aarch64").write_text(f"enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: {flags}\n"
                                        "offset 0\n")
    return d


def _host(euid: int, binfmt: Path, tools=ALL_TOOLS) -> Host:
    return Host(euid=euid, binfmt_dir=binfmt, which=tools.get)


def test_prerequisites_all_present(tmp_path):
    assert prereq.missing(_host(0, _binfmt(tmp_path)), building=True) == []


def test_no_root_is_named_with_a_hint(tmp_path):
    gaps = prereq.missing(_host(1000, _binfmt(tmp_path)), building=True)
    assert [g.what.split(" (")[0] for g in gaps] == ["not root"]
    assert "sudo" in gaps[0].hint


def test_every_missing_piece_is_listed(tmp_path):
    host = _host(1000, tmp_path / "nowhere", tools={})
    with pytest.raises(UnavailableError) as err:
        prereq.require(host, building=True, what="set up the aarch64 userland")
    msg = err.value.message
    assert err.value.exit_code == 2 and "\n" not in msg
    for piece in ("not root", "binfmt_misc is not mounted", "qemu-aarch64-static not found",
                  "debootstrap not found"):
        assert piece in msg
    assert "mount -t binfmt_misc" in err.value.hint and "apt-get install" in err.value.hint


def test_handler_without_f_flag_cannot_work_in_a_chroot(tmp_path):
    gaps = prereq.missing(_host(0, _binfmt(tmp_path, flags="P")), building=False)
    assert len(gaps) == 1 and "F flag" in gaps[0].what


def test_running_needs_a_registered_handler_building_registers_it(tmp_path):
    d = _binfmt(tmp_path, flags=None)
    assert [g.what for g in prereq.missing(_host(0, d), building=False)] == \
        ["no qemu-aarch64 binfmt handler is registered"]
    assert prereq.missing(_host(0, d), building=True) == []
    assert prereq.register_binfmt(_host(0, d))
    line = (d / "register").read_bytes()
    # every byte escaped (a raw ':' or newline in the magic would break the kernel's parser)
    assert line.startswith(b":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02") and line.endswith(
        b":/usr/bin/qemu-aarch64-static:F")
    assert b"\\x02\\x00\\xb7\\x00:" in line  # e_type EXEC, e_machine EM_AARCH64


@pytest.mark.parametrize("case", ["no-root", "no-binfmt"])
def test_cli_setup_without_prerequisites_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    from edgekit.cli.main import main

    binfmt = _binfmt(tmp_path) if case == "no-root" else tmp_path / "unmounted"
    fake = _host(1000 if case == "no-root" else 0, binfmt)
    monkeypatch.setattr(prereq.Host, "current", classmethod(lambda cls: fake))
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_ARM_CACHE", str(cache))
    assert main(["arm", "setup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: cannot set up the aarch64 userland: ")
    assert err[1].startswith("hint: ")
    assert ("not root" in err[0]) == (case == "no-root")
    assert ("binfmt_misc is not mounted" in err[0]) == (case == "no-binfmt")
    assert not cache.exists()


def test_kernel_family_follows_the_emulated_features():
    from edgekit.arm.runner_script import kernels

    assert "no dot-product" in kernels("onnxruntime", ["fp", "asimd"])
    assert "UDOT/SDOT" in kernels("onnxruntime", ["fp", "asimd", "asimddp"])
    assert "i8mm" in kernels("onnxruntime", ["asimd", "asimddp", "i8mm"])
    assert "asimddp" in kernels("ncnn", ["asimd", "asimddp"])


def test_executorch_says_in_one_line_why_not():
    from edgekit.arm.job import runtime_for
    from edgekit.errors import UsageError

    with pytest.raises(UsageError) as err:
        runtime_for("pte")
    assert "\n" not in err.value.message and "CUDA build" in err.value.message
    assert runtime_for("onnx") == "onnxruntime" and runtime_for("ncnn") == "ncnn"


@pytest.mark.parametrize("target,words", [("executorch", "CUDA build"), ("openvino", "no aarch64 runner")])
def test_export_refuses_before_any_work(tmp_path, target, words):
    from edgekit.arm.compare import precheck
    from edgekit.contracts import ExportRequest
    from edgekit.errors import UsageError

    with pytest.raises(UsageError) as err:
        precheck(ExportRequest(model="lenet5", target=target, arch="aarch64", out=tmp_path / "out"))
    assert words in err.value.message and err.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_arch_option_reaches_the_request():
    from edgekit.cli.export import request_from_args
    from edgekit.cli.main import build_parser

    args = build_parser().parse_args(["export", "lenet5", "--arch", "aarch64", "--arm-cpu", "cortex-a53,neoverse-n1",
                                      "--arm-samples", "4"])
    req = request_from_args(args)
    from edgekit.arm.compare import parse_cpus

    assert (req.arch, parse_cpus(req.arm_cpus), req.arm_samples) == ("aarch64", ("cortex-a53", "neoverse-n1"), 4)


# ---- the real emulation -------------------------------------------------------------------------

def _userland_reason() -> str | None:
    from edgekit.arm.setup import Userland

    gaps = prereq.missing(building=False)
    if gaps:
        return "aarch64 emulation unavailable: " + "; ".join(g.what for g in gaps)
    land = Userland.default()
    if not land.ready or "onnxruntime" not in land.runtimes():
        return f"aarch64 userland not set up at {land.folder} (run 'edgekit arm setup')"
    return None


def _wait_for_background_setup(limit_s: float = 1200.0) -> None:
    """.ci/run builds the userland while the suite runs and names the build's process in
    EDGEKIT_ARM_SETUP_PID: wait for it to end (or for ``limit_s``) before judging readiness."""
    import time

    pid = int(os.environ.get("EDGEKIT_ARM_SETUP_PID", "0") or 0)
    deadline = time.monotonic() + limit_s
    while pid > 0 and time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return                      # gone
        if state in ("Z", "X"):         # ended, not yet reaped by .ci/run
            return
        time.sleep(2.0)


@pytest.fixture
def userland():
    _wait_for_background_setup()
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
