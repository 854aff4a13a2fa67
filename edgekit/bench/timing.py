"""Latency of one Runner: load, first inference, warm-up, then timed runs.

What is timed (docs/bench.md has the full method):

* **load**: the runner's ``__enter__`` (session creation / model compile), once;
* **first inference**: the first ``infer`` after load, once, reported apart;
* **warm-up**: ``warmup - 1`` further runs, not reported;
* **timed runs**: each ``infer(feed)`` call alone, ``time.perf_counter_ns`` before and
  after, with Python's garbage collector paused, until ``iters`` runs or ``seconds``
  of timed runs have passed. Feed creation happens before the clock starts; the
  runner's own input conversion and output copy are inside it (users pay them too).

Memory: peak resident set size of the process during the measurement (Linux resets
the high-water mark through ``/proc/self/clear_refs`` first; elsewhere it is the
process's lifetime peak) and the RSS the runner added between before-load and the
end of the timed runs.
"""
from __future__ import annotations

import gc
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from ..specs import InputSpec

SEED = 20240601


@dataclass
class LatencyStats:
    """Latency of one runner on one device. Times in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float            # images per second: batch / mean latency
    first_ms: float | None       # the first inference after load
    load_ms: float | None        # runner __enter__ (None when measure did not open it)
    peak_rss_mb: float | None
    rss_delta_mb: float | None
    peak_rss_scope: str          # "measurement" (high-water mark reset before load) or "process"
    threads: int | None          # requested runtime threads (None: the runtime's default)
    batch: int
    iterations: int
    warmup: int
    timed_s: float               # wall time of the timed runs
    runner: str = ""
    loadavg: float | None = None  # 1-minute system load average after the runs: was the machine busy?
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        return f"p50 {self.p50_ms:.3g} ms, p90 {self.p90_ms:.3g} ms, {self.throughput:.1f} img/s"

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyStats":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def synthetic_feed(inputs: Sequence[InputSpec], batch: int | None = None, seed: int = SEED) -> dict[str, np.ndarray]:
    """One seeded feed shaped like ``inputs`` (N(0,1) floats; small non-negative integers)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = tuple(spec.shape)
        if batch is not None:
            shape = (batch, *shape[1:])
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feed


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        return None


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def _percentile(sorted_ms: np.ndarray, q: float) -> float:
    return float(np.percentile(sorted_ms, q, method="linear"))


def _as_feed_list(feeds: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]] | None) -> list[dict] | None:
    if feeds is None:
        return None
    if isinstance(feeds, Mapping):
        return [dict(feeds)]
    out = [dict(f) for f in feeds]
    if not out:
        raise UsageError("measure() got an empty list of feeds")
    return out


def _batch_of(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def measure(runner: Any, feeds: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]] | None = None, *,
            warmup: int = 10, iters: int | None = None, seconds: float = 2.0, batch: int | None = None,
            opened: bool = False, min_iters: int = 5, collect: bool = True) -> LatencyStats:
    """Time ``runner`` (an unopened Runner: ``measure`` enters it, timing that as load).

    ``feeds``: one feed, a list of feeds (used in turn), or None for a seeded synthetic
    feed shaped like ``runner.inputs`` (with ``batch`` as leading dimension when given).
    ``iters`` fixes the number of timed runs; otherwise runs continue until ``seconds``
    of timed runs have passed and at least ``min_iters`` runs were made. ``opened=True`` measures a runner that
    is already inside its ``with`` block (load is then not measured). The garbage collector
    is off while runs are timed; ``collect=False`` skips the full collection before them (a
    caller timing many short rounds collects once: with torch loaded one collection takes
    ~0.25 s, more than a 20 ms round).
    """
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if iters is not None and iters < 1:
        raise UsageError(f"--iters must be >= 1, got {iters}")
    if iters is None and not seconds > 0:
        raise UsageError(f"--seconds must be > 0, got {seconds}")
    feed_list = _as_feed_list(feeds)
    reset = _reset_peak_rss()
    rss0 = _rss_bytes()
    load_ms = None
    if not opened:
        t0 = time.perf_counter_ns()
        runner.__enter__()
        load_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        if feed_list is None:
            feed_list = [synthetic_feed(runner.inputs, batch)]
        n_images = batch if batch is not None else _batch_of(feed_list[0])
        samples, first_ms, timed_s = _run(runner, feed_list, warmup, iters, seconds, max(min_iters, 1), collect)
        rss1 = _rss_bytes()
        peak = _peak_rss_bytes()
    finally:
        if not opened:
            runner.__exit__(None, None, None)
    arr = np.sort(np.asarray(samples, dtype=np.float64))
    mean = float(arr.mean())
    return LatencyStats(
        p50_ms=_percentile(arr, 50), p90_ms=_percentile(arr, 90), p99_ms=_percentile(arr, 99),
        mean_ms=mean, std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0, min_ms=float(arr[0]),
        max_ms=float(arr[-1]), throughput=n_images * 1000.0 / mean if mean > 0 else math.inf,
        first_ms=first_ms, load_ms=load_ms, peak_rss_mb=_mb(peak),
        rss_delta_mb=_mb(rss1 - rss0) if rss0 is not None and rss1 is not None else None,
        peak_rss_scope="measurement" if reset else "process", threads=getattr(runner, "threads", None),
        batch=n_images, iterations=int(arr.size), warmup=warmup, timed_s=timed_s,
        runner=str(getattr(runner, "name", type(runner).__name__)), loadavg=_loadavg(),
        samples_ms=[float(x) for x in samples])


def _run(runner: Any, feeds: list[dict], warmup: int, iters: int | None, seconds: float,
         min_iters: int, collect: bool = True) -> tuple[list[float], float, float]:
    clock = time.perf_counter_ns
    t = clock()
    runner.infer(feeds[0])
    first_ms = (clock() - t) / 1e6
    for i in range(max(warmup - 1, 0)):
        runner.infer(feeds[(i + 1) % len(feeds)])
    samples: list[float] = []
    budget_ns = None if iters is not None else int(seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        start = clock()
        i = 0
        while True:
            feed = feeds[i % len(feeds)]
            t = clock()
            runner.infer(feed)
            samples.append((clock() - t) / 1e6)
            i += 1
            if iters is not None:
                if i >= iters:
                    break
            elif i >= min_iters and clock() - start >= budget_ns:
                break
        timed_s = (clock() - start) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, first_ms, timed_s


# Pause before each runner's block in an interleaved run. ONNX Runtime's intra-op threads
# spin-wait after each run (its default allow_spinning) and take CPU from whatever runs next on a
# 2-core machine: MobileNetV3-Large's OpenVINO INT8 IR timed right after ONNX Runtime FP32 read
# 1.08 ms, after a 10 / 20 / 50 ms pause 1.01 / 0.90 / 0.89 ms, and 0.87 ms after another
# OpenVINO model (2026-12-06). Without the pause, whichever runner followed ONNX Runtime in the
# round was measured slower than it is.
SETTLE_S = 0.05


def time_runners(runners: Mapping[str, Any], feed: Mapping[str, np.ndarray], seconds: float = 1.5,
                 warmup: int = 5, rounds: int = 10) -> dict[str, dict[str, Any]]:
    """p50/p90/mean/min latency (ms) of each *entered* runner on one feed, and its p50 in
    each round (``round_p50_ms``).

    The runners are timed in interleaved rounds of :func:`measure` (``seconds`` in all,
    shared among rounds and runners) and the samples pooled, so that load from other
    processes falls on all of them alike: a fair *comparison* on a busy machine. Compare two
    of them with :func:`paired_ratio`. Used by the INT8-vs-FP32 latency guards, the
    matrix's interleaved pairs and the bench scripts.
    """
    pooled: dict[str, list[float]] = {k: [] for k in runners}
    per_round_p50: dict[str, list[float]] = {k: [] for k in runners}
    per_round = seconds / max(1, rounds) / max(1, len(runners))
    gc.collect()  # once: the rounds allocate little, and a collection per round would cost more than the round
    for rnd in range(max(1, rounds)):
        for k, r in runners.items():
            if len(runners) > 1:
                time.sleep(SETTLE_S)  # the previous runner's worker threads stop spinning first
            s = measure(r, feed, warmup=warmup if rnd == 0 else 1, seconds=per_round, opened=True, min_iters=1,
                        collect=False)
            pooled[k] += s.samples_ms
            per_round_p50[k].append(round(float(np.median(s.samples_ms)), 4))
    out = {}
    for k, v in pooled.items():
        a = np.asarray(v)
        out[k] = {"p50_ms": round(float(np.percentile(a, 50)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
                  "mean_ms": round(float(a.mean()), 3), "min_ms": round(float(a.min()), 3), "iterations": int(a.size),
                  "round_p50_ms": per_round_p50[k]}
    return out


def paired_ratio(times: Mapping[str, Mapping[str, Any]], a: str, b: str) -> dict[str, Any]:
    """``a``'s latency over ``b``'s from one :func:`time_runners` result: the median, over
    rounds, of the ratio of their p50s in the same round, and in how many rounds ``a`` was
    the faster.

    The machine's speed drifts between rounds (on a shared VM by ±10 % within a minute); a
    ratio taken inside each round cancels that drift, and the median drops a round that a
    burst of load hit on one side only. Pooled p50s mix rounds of different speed and read
    a few percent either way from run to run. Falls back to the pooled p50s where the per-round
    figures are missing."""
    ra, rb = times[a].get("round_p50_ms") or [], times[b].get("round_p50_ms") or []
    pairs = [(x, y) for x, y in zip(ra, rb) if x > 0 and y > 0]
    if not pairs:
        return {"ratio": round(times[a]["p50_ms"] / max(times[b]["p50_ms"], 1e-9), 3), "rounds": 0, "rounds_faster": 0}
    return {"ratio": round(float(np.median([x / y for x, y in pairs])), 3), "rounds": len(pairs),
            "rounds_faster": sum(x < y for x, y in pairs)}
