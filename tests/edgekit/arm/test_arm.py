"""The emulated aarch64 runner (edgekit.arm, issue 24).

The prerequisite checks, which run everywhere on a fake Host (edgekit's own seam: euid, binfmt
folder, which). The emulated parity runs in test_arm_emulated.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.arm import prereq
from edgekit.arm.prereq import Host
from edgekit.errors import UnavailableError

ALL_TOOLS = {"qemu-aarch64-static": "/usr/bin/qemu-aarch64-static", "debootstrap": "/usr/sbin/debootstrap",
             "dpkg-deb": "/usr/bin/dpkg-deb"}


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
                  "debootstrap not found", "dpkg-deb not found"):
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
