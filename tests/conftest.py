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
    """``EDGEKIT_FAST=1`` leaves the ``slow`` acceptance tests out (they stay in plain ``make test``)."""
    if os.environ.get("EDGEKIT_FAST") != "1":
        return
    skip = pytest.mark.skip(reason="slow acceptance test left out by EDGEKIT_FAST=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
