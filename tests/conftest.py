"""Shared test helpers. Backend tests skip with a reason when the backend cannot run here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist runs one worker per core (`make test`: 2 on 2 cores). Each torch process would
# start one OpenMP thread per core, so the workers' threads outnumber the cores and spin
# against each other: test_zoo.py + test_openvino.py took 344 s with the default, 258 s with
# one thread per worker (2026-12-05, 2 cores). Set before torch is imported here or in a
# subprocess the tests start (the CLI, Ray nodes); an explicit OMP_NUM_THREADS is kept, and a
# runner given ``threads=N`` still sets its own count.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"


# One torch → ONNX export per model, input shape and opset for the whole run (issue 22): the
# suite exported the same networks 104 times, 106 s of it repeats (mobilenet_v3_small at 64 px
# eleven times, across test_arm, test_cluster and test_tensorrt_dryrun). The content-keyed cache
# of exporters/onnx/export_cache.py is shared by every xdist worker, CLI subprocess and Ray node
# the tests start (they inherit the environment set here, before the workers spawn). Each run
# gets a fresh folder, removed at the end; an EDGEKIT_EXPORT_CACHE set by the caller is kept.
_EXPORT_CACHE_OWNED: str | None = None
if "EDGEKIT_EXPORT_CACHE" not in os.environ:
    import tempfile

    _EXPORT_CACHE_OWNED = os.environ["EDGEKIT_EXPORT_CACHE"] = tempfile.mkdtemp(prefix="edgekit-test-exports-")


# The INT8 form choice and latency guard time each runner 1.5 s by default; the suite's exports
# only need the guard's figures to exist, not to be precise (no test asserts a speed), so they
# time 0.25 s each (about 5 s less per ONNX INT8 export). A value set by the caller is kept.
os.environ.setdefault("EDGEKIT_GUARD_SECONDS", "0.25")


def wait_for_background(env: str, limit_s: float = 1200.0) -> None:
    """.ci/run installs system packages and builds the aarch64 userland in the background while the
    suite runs, and names each job's process in an environment variable (EDGEKIT_APT_PID,
    EDGEKIT_ARM_SETUP_PID): a test that needs what the job makes waits for it to end (or for
    ``limit_s``) before it looks. Without the variable it returns at once."""
    import time

    pid = int(os.environ.get(env, "0") or 0)
    deadline = time.monotonic() + limit_s
    while pid > 0 and time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return                      # gone
        if state in ("Z", "X"):         # ended, not yet reaped by .ci/run
            return
        time.sleep(2.0)


def pytest_unconfigure(config):
    if _EXPORT_CACHE_OWNED and not hasattr(config, "workerinput"):
        import shutil

        shutil.rmtree(_EXPORT_CACHE_OWNED, ignore_errors=True)


def run_edgekit(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and stderr exactly as a user sees them)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def edgekit_cli():
    return run_edgekit


def pytest_collection_modifyitems(config, items):
    """``EDGEKIT_FAST=1`` leaves the ``slow`` acceptance tests out (they stay in plain ``make test``).
    (Reordering files here does not reach pytest-xdist's --dist loadfile, which hands out files by
    their number of tests, most first.)"""
    if os.environ.get("EDGEKIT_FAST") != "1":
        return
    skip = pytest.mark.skip(reason="slow acceptance test left out by EDGEKIT_FAST=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def exact_int8_cpu():
    """Skip marker for the NNCF route's accuracy figures, measured with 8-bit weights on CPUs with
    VNNI: on an x86 CPU without VNNI OpenVINO's kernels add u8×s8 product pairs in saturating 16-bit
    lanes, and the route then uses NNCF's overflow fix (7-bit weights), a different model
    (docs/openvino.md). The default Q/DQ route is exact there (paired weights) and is not skipped."""
    from edgekit.bench.device import int8_saturates

    return pytest.mark.skipif(int8_saturates(), reason="x86 CPU without VNNI: the NNCF route uses 7-bit weights "
                              "here, its figures are for 8-bit weights (docs/openvino.md)")


def torch_fp16_floor(model, feeds, compute: bool = True, name: str = "input") -> tuple[float, float]:
    """(cosine, SQNR) of PyTorch itself in FP16 against FP32 PyTorch on ``feeds``: an FP16
    artifact cannot be expected to beat it (deep untrained networks are ill-conditioned:
    efficientnet_v2_s with FP16 weights alone scores cosine 0.994 / SQNR 19 dB).
    ``compute=True``: FP16 weights and arithmetic (a program that computes in FP16, CoreML);
    ``compute=False``: FP16-rounded weights, FP32 arithmetic (an FP16-weight IR, OpenVINO)."""
    import copy

    import numpy as np
    import torch

    from edgekit.compare import cosine, sqnr_db

    half = copy.deepcopy(model).eval()
    with torch.no_grad():
        if compute:
            half = half.half()
        else:
            for prm in half.parameters():
                prm.copy_(prm.half().float())
        ref, got = [], []
        for f in feeds:
            x = torch.from_numpy(np.asarray(f[name], dtype=np.float32))
            ref.append(model.eval()(x).numpy())
            got.append(half(x.half() if compute else x).float().numpy())
    ref, got = np.concatenate(ref), np.concatenate(got)
    return cosine(ref, got), sqnr_db(ref, got)


def make_context(request, *, spec=None, model=None, inputs=(), source=None, calib=None, heldout=(), log=None,
                 warn=None, stem: str | None = None, fp32_source=None):
    """The tests' one ExportContext factory, filled as the pipeline fills it. ``log`` (default:
    silent) also receives the warnings unless ``warn`` is given; ``stem`` defaults to the
    spec's name."""
    from edgekit.contracts import ExportContext

    log = log or (lambda m: None)
    return ExportContext(request=request, spec=spec, model=model, inputs=tuple(inputs), source=source,
                         calib_feeds=calib, heldout_feeds=heldout, log=log, warn=warn or log,
                         stem=stem or (spec.name if spec is not None else "model"), fp32_source=fp32_source)
