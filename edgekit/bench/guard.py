"""The INT8 latency guard shared by the exporters that deliver an INT8 artifact for a CPU runtime.

After an INT8 build, the INT8 and FP32 artifacts are timed on the same runtime, in interleaved
rounds (:func:`edgekit.bench.timing.time_runners`, so drift on a busy machine hits both alike),
on the export's thread count and one held-out feed; the speed-up is the median of the
per-round ratios (:func:`edgekit.bench.timing.paired_ratio`). The figures go into the manifest; when
INT8 is not faster the export warns (an INT8 artifact slower than its FP32 sibling defeats its
purpose), otherwise it logs the figures. The guard only reports: it never fails an export.
"""
from __future__ import annotations

import os
from typing import Any

from ..contracts import ExportContext, ExportRequest
from .timing import paired_ratio, time_runners

GUARD_SECONDS = 1.5
GUARD_ENV = "EDGEKIT_GUARD_SECONDS"


def guard_seconds(request: ExportRequest, default: float = GUARD_SECONDS) -> float:
    """Seconds each runner is timed by an export's INT8 form choice and latency guard: the
    request's (``--guard-seconds``, or a matrix's timing budget), else ``$EDGEKIT_GUARD_SECONDS``
    (a CI job's quick setting for every export it runs), else ``default``."""
    if request.guard_seconds:
        return float(request.guard_seconds)
    env = os.environ.get(GUARD_ENV, "").strip()
    if env:
        from ..specs import guard_seconds_option

        return guard_seconds_option(f"${GUARD_ENV}")(env)
    return default


def int8_guard(ctx: ExportContext, fp32, int8, seconds: float, what: str, advice: str = "",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time the open runners ``fp32`` and ``int8`` for ``seconds`` each; warn when INT8 is not
    faster. ``what`` names the artifacts in the warning ("INT8 IR ... FP32 IR")."""
    feed = next(iter(ctx.heldout_feeds))
    t = time_runners({"fp32": fp32, "int8": int8}, feed, seconds=2 * seconds)
    return guard_record(ctx, t, "int8", getattr(int8, "name", type(int8).__name__), seconds, what, advice, extra)


def guard_record(ctx: ExportContext, t: dict[str, dict[str, Any]], key: str, runner: str, seconds: float,
                 what: str, advice: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The guard's manifest record from a :func:`time_runners` result holding ``"fp32"`` and
    ``key`` (timed interleaved with each other, perhaps beside other candidates); warns when
    INT8 is not faster."""
    paired = paired_ratio(t, key, "fp32")
    speedup = 1.0 / max(paired["ratio"], 1e-9)
    out = {"runner": runner, "threads": ctx.request.threads, **(extra or {}),
           "fp32_p50_ms": t["fp32"]["p50_ms"], "int8_p50_ms": t[key]["p50_ms"],
           "fp32_p90_ms": t["fp32"]["p90_ms"], "int8_p90_ms": t[key]["p90_ms"],
           "speedup": round(speedup, 3), "int8_faster": speedup > 1.0, "seconds_each": seconds,
           "rounds": paired["rounds"], "rounds_int8_faster": paired["rounds_faster"]}
    # in how many rounds INT8 won: 5 of 10 at 0.99x is this machine's timing noise, 0 of 10 is not
    won = f"; INT8 faster in {paired['rounds_faster']} of them" if paired["rounds"] else ""
    msg = (f"INT8 {t[key]['p50_ms']:.2f} ms vs FP32 {t['fp32']['p50_ms']:.2f} ms p50 on {runner} "
           f"({speedup:.2f}x, median of {paired['rounds']} paired rounds{won})")
    if speedup <= 1.0:
        ctx.warn(f"the INT8 {what} is not faster than the FP32 {what}: {msg}{advice}")
    else:
        ctx.log(f"latency guard: {msg}")
    return out
