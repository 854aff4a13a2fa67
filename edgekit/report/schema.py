"""The report's JSON schema (``edgekit.report/1``): the source of truth for every view.

A report is a plain dict::

    {"schema": "edgekit.report/1", "kind": "bench" | "matrix" | "ci" | "merged",
     "created": "...", "edgekit": "0.1.0", "settings": {...},
     "devices": {device_id: fingerprint},          # edgekit.bench.device.fingerprint()
     "rows": [row, ...],                           # see make_row
     "checks": [{"check": ..., "message": ...}],   # derived: INT8 slower than FP32, ...
     "sources": [...]}                             # merged reports: where rows came from

A row is keyed by (model, target, precision, device_id, versions) plus the input
shape and threads, so reports from many devices (and runtime versions) merge without
collisions. Speed-ups and checks are derived from the rows by :func:`finalize`;
renderers never measure anything.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import ArtifactError, UsageError

SCHEMA = "edgekit.report/1"
KINDS = ("bench", "matrix", "ci", "merged")
STATUSES = ("ok", "parity-fail", "error", "skipped")
TARGET_ORDER = {"torch": 0, "onnx": 1, "openvino": 2, "tensorrt": 3, "coreml": 4, "executorch": 5, "ncnn": 6}
PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}

PARITY_ONLY = "parity-only-runner"  # row flag: timed on a reference interpreter, not a device runtime

_ROW_DEFAULTS: dict[str, Any] = {
    "model": "", "target": "", "precision": "fp32", "device_id": "", "versions": {},
    "status": "ok", "error": None, "baseline": False, "reused": False,
    "stage": None, "runner": None, "artifact": None, "format": None, "size_mb": None,
    "input_shape": None, "batch": 1, "threads": None, "device": None, "options": {}, "default_options": True,
    "latency": None, "parity": None, "speedup": None, "flags": [], "notes": [], "warnings": [],
    "paired": None,  # INT8 rows: {fp32_p50_ms, int8_p50_ms, ratio, ...} timed interleaved with the FP32 sibling
    "paired_baseline": None,  # {torch_p50_ms, p50_ms, speedup, ...} timed interleaved with torch eager FP32
}


def make_row(**fields: Any) -> dict[str, Any]:
    """A report row with every field present (unknown fields are refused)."""
    unknown = set(fields) - set(_ROW_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown report row fields: {sorted(unknown)}")
    row = {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in _ROW_DEFAULTS.items()}
    row.update(fields)
    if row["status"] not in STATUSES:
        raise ValueError(f"bad row status {row['status']!r}; expected one of {STATUSES}")
    return row


def versions_key(versions: dict[str, str]) -> str:
    return ",".join(f"{k}={versions[k]}" for k in sorted(versions))


def row_key(row: dict[str, Any]) -> tuple:
    """Identity of a measurement: two rows with the same key measure the same thing."""
    return (row["model"], row["target"], row["precision"], row["device_id"], versions_key(row.get("versions") or {}),
            tuple(row.get("input_shape") or ()), row.get("threads"), row.get("device"))


def cell_key(row: dict[str, Any]) -> tuple:
    """What a table line shows: the same artifact kind on any device."""
    return (row["model"], row["target"], row["precision"], tuple(row.get("input_shape") or ()))


def sort_key(row: dict[str, Any]) -> tuple:
    return (row["model"], TARGET_ORDER.get(row["target"], 50), row["target"],
            PRECISION_ORDER.get(row["precision"], 9), tuple(row.get("input_shape") or ()))


def parity_summary(parity: list[dict[str, Any]] | None, final_stage: str | None = None,
                   stability: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The final stage's parity metrics (first output) plus whether every stage passed.

    ``parity`` is the list of ``Comparison.to_dict()`` a manifest stores; ``stability`` its
    ``reports.reference_stability`` (edgekit.stability), kept as the yardstick for top-1."""
    if not parity:
        return None
    final = next((c for c in parity if c.get("stage") == final_stage), parity[-1])
    out = (final.get("outputs") or [{}])[0]
    failing = [c.get("stage") for c in parity if not c.get("passed")]
    return {"stage": final.get("stage"), "runner": final.get("runner"), "passed": bool(final.get("passed")),
            "all_passed": not failing, "failing_stages": failing,
            "failures": [f"{c.get('stage')}: {f}" for c in parity for f in (c.get("failures") or [])],
            "max_abs": out.get("max_abs"), "cosine": out.get("cosine"), "sqnr_db": out.get("sqnr_db"),
            "top1": out.get("top1"), "top5": out.get("top5"), "samples": out.get("samples"),
            "inputs": final.get("inputs"),
            # the two references (edgekit/verdict.py): quantization error vs FP32, runtime fidelity
            # vs the shared graph run by ONNX Runtime (the worst reduced-precision stage's)
            "quantization": final.get("quantization"),
            "fidelity": _fidelity_summary(parity),
            "reference_stability": {k: stability.get(k) for k in ("amplitude_steps", "top1", "cosine", "sqnr_db")}
            if stability else None}


def _fidelity_summary(parity: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest fidelity SQNR among the stages that have one, whether all passed, and who failed."""
    rows = [(c.get("stage"), c["fidelity"]) for c in parity if c.get("fidelity")]
    if not rows:
        return None

    def sq(f):
        v = ((f.get("outputs") or [{}])[0]).get("sqnr_db")
        return float("inf") if v in (None, "inf") else float(v)

    stage, worst = min(rows, key=lambda r: sq(r[1]))
    return {"stage": stage, "reference": worst.get("reference"), "sqnr_db": (worst.get("outputs") or [{}])[0].get("sqnr_db"),
            "floor_db": (worst.get("tolerance") or {}).get("sqnr_db"), "passed": all(f.get("passed") for _, f in rows),
            "failing_stages": [s for s, f in rows if not f.get("passed")]}


def manifest_parity(manifest) -> dict[str, Any] | None:
    """:func:`parity_summary` of an artifact manifest: its final stage and its stability yardstick."""
    return parity_summary(manifest.parity, manifest.final.stage, manifest.reports.get("reference_stability"))


def new_report(kind: str, rows: Iterable[dict[str, Any]], devices: dict[str, dict[str, Any]],
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
    from .. import __version__

    if kind not in KINDS:
        raise ValueError(f"bad report kind {kind!r}")
    report = {"schema": SCHEMA, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "edgekit": __version__, "settings": dict(settings or {}), "devices": dict(devices),
              "rows": list(rows), "checks": [], "sources": []}
    return finalize(report)


def _p50(row: dict[str, Any]) -> float | None:
    lat = row.get("latency") or {}
    v = lat.get("p50_ms")
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def finalize(report: dict[str, Any]) -> dict[str, Any]:
    """Sort rows, compute each row's speed-up over the torch eager baseline measured on the
    same device (same model, input shape and batch) and the INT8-vs-FP32 check."""
    rows = report["rows"]
    order: dict[str, int] = {}
    for r in rows:  # models keep the order they were given in; targets and precisions a fixed one
        order.setdefault(r["model"], len(order))
    rows.sort(key=lambda r: (order[r["model"]], *sort_key(r)))
    base: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("baseline") and _p50(r):
            key = (r["model"], r["device_id"], tuple(r.get("input_shape") or ()))
            base.setdefault((*key, r.get("threads")), r)  # same thread setting: preferred
            base.setdefault(key, r)
    for r in rows:
        key = (r["model"], r["device_id"], tuple(r.get("input_shape") or ()))
        b = base.get((*key, r.get("threads"))) or base.get(key)
        pb = r.get("paired_baseline") or {}
        if PARITY_ONLY in (r.get("flags") or []):
            r["speedup"] = None  # a reference interpreter's time is no device's latency
        elif pb.get("speedup"):  # an interleaved pair outranks two measurements taken apart
            r["speedup"] = float(pb["speedup"])
        else:
            r["speedup"] = _p50(b) / _p50(r) if b and _p50(r) else None
        r["flags"] = [f for f in r.get("flags", []) if f not in ("int8-slower-than-fp32", "busy-machine")]
        load = (r.get("latency") or {}).get("loadavg")
        cpus = ((report.get("devices", {}).get(r["device_id"]) or {}).get("cpu") or {}).get("usable_threads")
        if isinstance(load, (int, float)) and cpus and load > 1.5 * cpus:
            r["flags"].append("busy-machine")
    report["checks"] = [c for c in report.get("checks", [])
                        if c.get("check") not in ("int8-slower-than-fp32", "busy-machine")]
    for dev in device_ids(report):
        busy = [r for r in rows if r["device_id"] == dev and "busy-machine" in r["flags"]]
        if busy:
            loads = [r["latency"]["loadavg"] for r in busy]
            report["checks"].append({
                "check": "busy-machine", "device_id": dev, "rows": len(busy), "max_loadavg": max(loads),
                "message": f"{len(busy)} row(s) on device {dev} were measured with a system load average up to "
                           f"{max(loads):.1f} on {report['devices'][dev]['cpu']['usable_threads']} usable CPUs: "
                           "latencies and speed-ups are not representative (torch eager suffers most)"})
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r.get("baseline") or not _p50(r) or r["status"] not in ("ok", "parity-fail") or PARITY_ONLY in r["flags"]:
            continue
        key = (r["model"], r["target"], r["device_id"], tuple(r.get("input_shape") or ()), r.get("threads"),
               r.get("device"))
        groups.setdefault(key, {})[r["precision"]] = r
    for (model, target, dev, shape, _threads, _device), by_prec in groups.items():
        i8, f32 = by_prec.get("int8"), by_prec.get("fp32")
        if not (i8 and f32 and i8.get("default_options", True)):
            continue
        # an interleaved pair (bench.run.pair_int8_with_fp32) outranks two measurements taken apart
        # (its ratio is the median of per-round ratios, which can differ from the pooled p50s' quotient)
        paired = i8.get("paired") or {}
        a, b = (paired.get("int8_p50_ms"), paired.get("fp32_p50_ms")) if paired else (_p50(i8), _p50(f32))
        rounds = f", median of {paired['rounds']} paired rounds" if paired.get("rounds") else ""
        how = f" (interleaved{rounds})" if paired else ""
        ratio = paired.get("ratio") or (a / b if a and b else None)
        if ratio and ratio > 1.0:
            i8["flags"].append("int8-slower-than-fp32")
            report["checks"].append({
                "check": "int8-slower-than-fp32", "model": model, "target": target, "device_id": dev,
                "input_shape": list(shape), "int8_p50_ms": a, "fp32_p50_ms": b, "ratio": round(ratio, 3),
                "interleaved": bool(paired),
                "message": f"{model} {target}: default INT8 is {ratio:.2f}x its FP32 sibling's latency{how} "
                           f"on device {dev} (p50 {a:.3g} against {b:.3g} ms)"})
    return report


def device_ids(report: dict[str, Any]) -> list[str]:
    """Devices in the order they first appear in the rows (then any without rows)."""
    seen: list[str] = []
    for r in report["rows"]:
        if r["device_id"] not in seen:
            seen.append(r["device_id"])
    return seen + [d for d in report.get("devices", {}) if d not in seen]


def validate(report: Any, where: str = "report") -> dict[str, Any]:
    if not isinstance(report, dict):
        raise ArtifactError(f"{where} is not an edgekit report (top level is not an object)")
    if report.get("schema") != SCHEMA:
        raise ArtifactError(f"{where}: unknown report schema {report.get('schema')!r}",
                            hint=f"expected {SCHEMA}: write it with 'edgekit bench' or 'edgekit matrix'")
    for key, typ in (("rows", list), ("devices", dict)):
        if not isinstance(report.get(key), typ):
            raise ArtifactError(f"{where}: '{key}' is missing or not a {typ.__name__}")
    for i, r in enumerate(report["rows"]):
        missing = [k for k in ("model", "target", "precision", "device_id", "status") if k not in r]
        if missing:
            raise ArtifactError(f"{where}: row {i} lacks {', '.join(missing)}")
        if r["device_id"] not in report["devices"]:
            raise ArtifactError(f"{where}: row {i} names device {r['device_id']!r} with no fingerprint")
        for k, v in _ROW_DEFAULTS.items():
            r.setdefault(k, v.copy() if isinstance(v, (dict, list)) else v)
    report.setdefault("checks", [])
    report.setdefault("sources", [])
    report.setdefault("settings", {})
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"report not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from None
    return validate(data, str(path))


def _clean(o: Any) -> Any:
    """JSON has no inf/nan: write them as strings, like Comparison.to_dict does."""
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        return o.item()
    return o


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False)


def write_text(path: str | Path, text: str) -> Path:
    """Write atomically (temporary file beside it, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    return write_text(path, dumps(report) + "\n")
