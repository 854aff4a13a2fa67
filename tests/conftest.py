"""Shared test helpers. Backend tests skip with a reason when the backend cannot run here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
