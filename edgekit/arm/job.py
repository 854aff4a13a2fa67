"""Host side of one emulated run: write a job folder inside the userland, run the runner
script there under a chosen ``QEMU_CPU``, read the outputs back, delete the folder.

Only files cross the boundary: the artifact (copied), the feeds as ``.npy``, the outputs as
``.npy`` and a ``result.json``. The job folder lives under the userland's /tmp and is removed
whether the run succeeds or not.
"""
from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UsageError
from . import chroot as ch
from .prereq import require
from .setup import Userland

RUNTIME_BY_FORMAT = {"onnx": "onnxruntime", "ncnn": "ncnn"}
UNSUPPORTED = {
    "pte": "ExecuTorch's Python runtime loads libtorch, and PyPI's only aarch64 torch wheel is the CUDA build "
           "(427 MB plus ~3 GB of CUDA wheels it requires); the CPU aarch64 torch is on download.pytorch.org only",
}
SCRIPT_SOURCE = Path(__file__).with_name("runner_script.py")


@dataclass
class JobModel:
    key: str
    path: Path
    precision: str = "fp32"
    output_shapes: list | None = None


@dataclass
class JobResult:
    info: dict[str, Any]
    outputs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # key -> per feed

    def describe(self) -> str:
        return (f"aarch64 QEMU_CPU={self.info.get('qemu_cpu')}: features {' '.join(self.info.get('features', []))}"
                f" — {self.info.get('kernels', '')}")


def runtime_for(fmt: str) -> str:
    try:
        return RUNTIME_BY_FORMAT[fmt]
    except KeyError:
        if fmt in UNSUPPORTED:
            raise UsageError(f"no aarch64 runner for '{fmt}' artifacts: {UNSUPPORTED[fmt]}",
                             hint="check the ONNX stage instead: 'edgekit export ... --target onnx --arch aarch64'")
        raise UsageError(f"no aarch64 runner for '{fmt}' artifacts",
                         hint=f"--arch aarch64 runs {', '.join(sorted(RUNTIME_BY_FORMAT))} artifacts") from None


def usable_userland(runtime: str, land: Userland | None = None) -> Userland:
    """The set-up userland with ``runtime`` installed, or a one-line UnavailableError."""
    require(building=False, what="run the aarch64 emulation")
    land = land or Userland.default()
    if not land.ready:
        raise UsageError(f"the aarch64 userland is not set up ({land.folder})",
                         hint="run 'edgekit arm setup' once (about 4 minutes; cached afterwards)")
    if runtime not in land.runtimes():
        raise UsageError(f"{runtime} is not installed in the aarch64 userland",
                         hint=f"run 'edgekit arm setup --runtime {runtime}'")
    return land


def run_job(land: Userland, runtime: str, models: Sequence[JobModel], feeds: Sequence[dict[str, np.ndarray]],
            input_names: Sequence[str], cpu: str | None, threads: int = 1, timeout: float = 3600) -> JobResult:
    script = land.root / ch.SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCRIPT_SOURCE, script)  # always this edgekit's version of the script
    inside = f"{ch.JOBS}/{uuid.uuid4().hex[:12]}"
    folder = land.root / inside.lstrip("/")
    (folder / "feeds").mkdir(parents=True)
    try:
        job = {"runtime": runtime, "threads": threads, "inputs": list(input_names), "feeds": len(feeds),
               "models": []}
        for m in models:
            dest = folder / f"{m.key}{''.join(m.path.suffixes[-1:])}"
            (shutil.copytree if m.path.is_dir() else shutil.copyfile)(m.path, dest)
            job["models"].append({"key": m.key, "path": dest.name, "precision": m.precision,
                                  "output_shapes": m.output_shapes})
        for i, feed in enumerate(feeds):
            for j, name in enumerate(input_names):
                np.save(folder / "feeds" / f"{i:04d}_{j}.npy", np.asarray(feed[name]))
        (folder / "job.json").write_text(json.dumps(job))
        ch.run(land.root, [ch.PYTHON, "-I", ch.SCRIPT, inside], cpu=cpu, timeout=timeout)
        info = json.loads((folder / "result.json").read_text())
        result = JobResult(info={k: v for k, v in info.items() if k != "models"})
        for m in models:
            names = info["models"][m.key]["outputs"]
            result.outputs[m.key] = [
                {n: np.load(folder / "out" / m.key / f"{i:04d}_{k}.npy") for k, n in enumerate(names)}
                for i in range(len(feeds))]
            result.info.setdefault("seconds", {})[m.key] = info["models"][m.key]["seconds"]
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
