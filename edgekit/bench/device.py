"""The device a measurement ran on: CPU, ISA, memory, GPU, OS, runtime versions.

``fingerprint()`` returns a plain dict that goes into every report. Its
``device_id`` is a short hash of the hardware and OS fields only (not of the
runtime versions, which every report row carries itself), so the same machine
gives the same id across edgekit and runtime upgrades, and reports from many
machines merge into one column per device.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

# Distributions whose versions matter for latency; only installed ones are reported.
RUNTIMES = ("edgekit", "torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
            "openvino", "nncf", "coremltools", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "executorch",
            "ncnn", "pnnx")

# ISA features that change which kernels runtimes pick (x86 from /proc/cpuinfo "flags",
# Arm from "Features", macOS from sysctl hw.optional.*).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
             "neon", "asimd", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme")
_MAC_FLAGS = {"hw.optional.neon": "neon", "hw.optional.arm.FEAT_DotProd": "asimddp",
              "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16",
              "hw.optional.arm.FEAT_FP16": "fphp", "hw.optional.arm.FEAT_SME": "sme",
              "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f"}


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _cmd(*args: str, timeout: float = 5.0) -> str:
    if not shutil.which(args[0]):
        return ""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo plus the number of distinct physical cores."""
    info: dict[str, str] = {}
    cores = set()
    phys = core = None
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
        if key and key not in info:
            info[key] = value
    if cores:
        info["_physical_cores"] = str(len(cores))
    return info


def cpu_info() -> dict[str, Any]:
    info = _cpuinfo()
    model = info.get("model name") or info.get("Model") or info.get("Hardware") or ""
    if sys.platform == "darwin":
        model = model or _cmd("sysctl", "-n", "machdep.cpu.brand_string")
    model = model or platform.processor() or platform.machine()
    flags: set[str] = set((info.get("flags") or info.get("Features") or "").split())
    if sys.platform == "darwin":
        for key, name in _MAC_FLAGS.items():
            if _cmd("sysctl", "-n", key) == "1":
                flags.add(name)
    if platform.machine().lower() in ("arm64", "aarch64") and "asimd" in flags:
        flags.add("neon")
    logical = os.cpu_count() or 0
    physical = None
    with contextlib.suppress(Exception):
        import psutil

        physical = psutil.cpu_count(logical=False)
    if not physical and info.get("_physical_cores"):
        physical = int(info["_physical_cores"])
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return {"model": " ".join(model.split()), "arch": platform.machine(),
            "isa": sorted(f for f in ISA_FLAGS if f in flags),
            "cores": physical or logical, "threads": logical, "usable_threads": usable,
            "vendor": info.get("vendor_id") or info.get("CPU implementer") or ""}


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_saturates(cpu: dict[str, Any] | None = None) -> bool:
    """Whether this is an x86 CPU without VNNI, where u8×s8 integer kernels (ONNX Runtime's default
    ones, oneDNN's in OpenVINO) add product pairs in saturating 16-bit lanes. ONNX Runtime has a
    session key for exact kernels (edgekit/ort_options.py); OpenVINO has none, so an INT8 IR
    computes differently on such a CPU (docs/openvino.md)."""
    cpu = cpu or cpu_info()
    x86 = str(cpu.get("arch", "")).lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not any(f in cpu.get("isa", ()) for f in VNNI_FLAGS)


INT8_WEIGHTS = ("auto", "paired", "full")   # --ov-int8-weights, --ort-int8-weights


def wants_paired_weights(asked: str | None, device: str | None = None) -> bool:
    """Whether INT8 weights are calibrated with every pair that u8×s8 kernels add in 16 bits held to
    calibration.qdq.PAIR_BUDGET: asked for (``paired``), or ``auto`` (the default) for this CPU where it
    lacks VNNI and the artifact is for a CPU, not a GPU or NPU."""
    on_cpu = not (device or "CPU").upper().startswith(("GPU", "NPU", "CUDA"))
    return asked == "paired" or (asked in (None, "auto") and on_cpu and int8_saturates())


def memory_gb() -> float | None:
    with contextlib.suppress(Exception):
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return None


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs from nvidia-smi when it is on PATH; else torch.cuda if torch is already loaded."""
    out = _cmd("nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
               "--format=csv,noheader,nounits")
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            mem = round(float(parts[2]) / 1024, 1) if parts[2].replace(".", "").isdigit() else None
            found.append({"vendor": "nvidia", "name": parts[0], "driver": parts[1], "memory_gb": mem,
                          "compute_capability": parts[3] if len(parts) > 3 else None})
    if found:
        cuda = _cmd("nvidia-smi")
        for line in cuda.splitlines():
            if "CUDA Version" in line:
                ver = line.split("CUDA Version:")[-1].strip(" |")
                for g in found:
                    g["cuda_driver_api"] = ver
                break
        return found
    torch = sys.modules.get("torch")  # importing torch just to look would cost seconds
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    p = torch.cuda.get_device_properties(i)
                    found.append({"vendor": "nvidia", "name": p.name, "driver": None,
                                  "memory_gb": round(p.total_memory / 2**30, 1),
                                  "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda})
    if not found and sys.platform == "darwin" and platform.machine() == "arm64":
        found.append({"vendor": "apple", "name": "Apple GPU + Neural Engine", "driver": platform.mac_ver()[0]})
    return found


def runtime_versions(names: tuple[str, ...] = RUNTIMES) -> dict[str, str]:
    """Versions of the installed distributions among ``names``."""
    out = {}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


def os_info() -> dict[str, str]:
    d = {"system": platform.system(), "release": platform.release(), "platform": platform.platform(terse=True)}
    if sys.platform.startswith("linux"):
        for line in _read("/etc/os-release").splitlines():
            if line.startswith("PRETTY_NAME="):
                d["distro"] = line.partition("=")[2].strip().strip('"')
        libc = platform.libc_ver()
        if libc[0]:
            d["libc"] = " ".join(libc)
    elif sys.platform == "darwin":
        d["distro"] = f"macOS {platform.mac_ver()[0]}"
    return d


def device_id_of(fp: dict[str, Any]) -> str:
    """Short stable id: hash of hardware + OS family (+ the user's label), not versions."""
    cpu, mem = fp.get("cpu", {}), fp.get("memory_gb")
    key = {"cpu": [cpu.get("model"), cpu.get("arch"), cpu.get("cores"), cpu.get("threads"), cpu.get("isa")],
           "memory_gb": round(mem) if isinstance(mem, (int, float)) else None,
           "gpus": [g.get("name") for g in fp.get("gpus", [])],
           "os": fp.get("os", {}).get("system"), "label": fp.get("label") or None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def short_label(fp: dict[str, Any]) -> str:
    """``Intel Xeon Processor, 2 threads, Linux x86_64`` (+ first GPU), or the user's label."""
    if fp.get("label"):
        return str(fp["label"])
    cpu = fp.get("cpu", {})
    model = cpu.get("model", "cpu")
    for noise in ("(R)", "(TM)", "(tm)", " CPU", " Processor", "  "):
        model = model.replace(noise, " " if noise == "  " else "")
    parts = [" ".join(model.split()), f"{cpu.get('threads', '?')} threads"]
    if fp.get("gpus"):
        parts.append(fp["gpus"][0].get("name", "gpu"))
    parts.append(f"{fp.get('os', {}).get('system', '')} {cpu.get('arch', '')}".strip())
    return ", ".join(p for p in parts if p)


@lru_cache(maxsize=4)
def _fingerprint(label: str | None) -> str:
    fp: dict[str, Any] = {"label": label, "cpu": cpu_info(), "memory_gb": memory_gb(), "gpus": gpus(),
                          "os": os_info(),
                          "python": {"version": platform.python_version(),
                                     "implementation": platform.python_implementation()},
                          "runtimes": runtime_versions()}
    fp["device_id"] = device_id_of(fp)
    fp["name"] = short_label(fp)
    return json.dumps(fp)


def fingerprint(label: str | None = None) -> dict[str, Any]:
    """This machine's fingerprint. ``label`` (or $EDGEKIT_DEVICE_LABEL) names it in reports
    and tells apart identical machines that should not share a column."""
    label = label or os.environ.get("EDGEKIT_DEVICE_LABEL") or None
    return json.loads(_fingerprint(label))
