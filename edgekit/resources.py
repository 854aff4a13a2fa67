"""Memory limits, checked before anything is allocated.

An export holds its held-out and calibration samples decoded in memory (float32, one
C×H×W array per image), runs the model on batches of them, and keeps an FP64 copy of
the model for the reference's rounding error. The estimate below is deliberately rough
(activations are guessed from the input size); it exists to turn "grows until the kernel
kills it" into a one-line refusal that says how much was asked for and how much there is.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import UsageError
from .specs import MAX_SAMPLES

# A forward pass of a vision network holds a few dozen input-sized activation tensors at
# its widest (torch's eager reference, ONNX Runtime's arena, the FP64 rounding copy).
ACTIVATION_FACTOR = 32
# Use at most this share of the memory the OS reports as available.
HEADROOM = 0.8
CALIB_SAMPLES = 256  # edgekit.feeds.photo_feeds' default


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable (or psutil), capped by a cgroup limit."""
    avail = None
    try:
        import psutil  # optional

        avail = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed, or no /proc
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return min(avail, limit) if limit is not None else avail


def _cgroup_room() -> int | None:
    try:
        cg = Path("/sys/fs/cgroup")
        maxi, cur = (cg / "memory.max").read_text().strip(), (cg / "memory.current").read_text().strip()
        if maxi == "max":
            return None
        return max(0, int(maxi) - int(cur))
    except (OSError, ValueError):
        return None


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.0f} EB"  # pragma: no cover


def feeds_estimate(shape: tuple[int, ...], samples: int, calib: int = CALIB_SAMPLES) -> dict[str, int]:
    """Bytes for the decoded samples and for one batch's activations at ``shape`` (N×C×H×W)."""
    per_image = 4 * math.prod(int(d) for d in shape[1:])
    return {"feeds": per_image * (int(samples) + int(calib)),
            "activations": per_image * int(shape[0]) * ACTIVATION_FACTOR}


def check_memory(shape: tuple[int, ...], samples: int, calib: int = CALIB_SAMPLES,
                 available: int | None = None, what: str | None = "--samples", calib_what: str | None = None) -> None:
    """Refuse (UsageError, exit 2) a request whose samples or input size cannot fit in memory.
    ``what`` / ``calib_what``: the options that set ``samples`` / ``calib`` (None when a default: the input is blamed)."""
    shape_s = "x".join(str(d) for d in shape)
    est = feeds_estimate(shape, samples, calib)
    total = est["feeds"] + est["activations"]
    avail = available_bytes() if available is None else available
    room = f"this machine has {human(avail)} available" if avail is not None else "available memory is unknown"
    if calib_what and calib > MAX_SAMPLES:
        raise UsageError(f"{calib_what} {calib} at {shape_s}: edgekit takes at most {MAX_SAMPLES} samples ({room})",
                         hint=f"use {calib_what} 256 to 1024: the ranges settle long before that")
    if what and samples > MAX_SAMPLES:
        raise UsageError(f"{what} {samples} at {shape_s} needs ~{human(est['feeds'])} of feeds; edgekit takes at "
                         f"most {MAX_SAMPLES} samples ({room})", hint=f"use {what} 200 or so: parity statistics "
                         "settle long before that")
    if avail is None or total <= HEADROOM * avail:
        return
    if calib_what and est["feeds"] >= est["activations"] and calib >= samples and calib > 1:
        raise UsageError(f"{calib_what} {calib} at {shape_s} needs ~{human(total)} ({human(est['feeds'])} of feeds); "
                         f"{room}", hint="use fewer calibration samples or a smaller --input-shape")
    if what and est["feeds"] >= est["activations"] and samples > 1:
        raise UsageError(f"{what} {samples} at {shape_s} needs ~{human(total)} ({human(est['feeds'])} of feeds); "
                         f"{room}", hint="use fewer samples or a smaller --input-shape")
    raise UsageError(f"input {shape_s} is too large: ~{human(total)} for its samples and activations; {room}",
                     hint="use a smaller --input-shape (or --batch)")
