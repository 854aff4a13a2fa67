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

from ..errors import ArtifactError, UsageError, first_line

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


# What each row field must be: a report is data from any device, checked whole before any
# view or merge reads it, so a wrong type is a one-line schema error naming the field.
_NUM, _NONE = (int, float), type(None)
_ROW_TYPES: dict[str, tuple] = {
    "model": (str,), "target": (str,), "precision": (str,), "device_id": (str,), "status": (str,),
    "versions": (dict,), "error": (str, _NONE), "baseline": (bool,), "reused": (bool,),
    "stage": (str, _NONE), "runner": (str, _NONE), "artifact": (str, _NONE), "format": (str, _NONE),
    "size_mb": (*_NUM, _NONE), "input_shape": (list, _NONE), "batch": (int, _NONE), "threads": (int, _NONE),
    "device": (str, _NONE), "options": (dict,), "default_options": (bool,), "latency": (dict, _NONE),
    "parity": (dict, _NONE), "speedup": (*_NUM, _NONE), "flags": (list,), "notes": (list,), "warnings": (list,),
    "paired": (dict, _NONE), "paired_baseline": (dict, _NONE),
}
# numbers inside the row's objects that the views and finalize compute with ("inf"/"nan": JSON's
# spelling of non-finite floats, see _clean)
_NESTED_NUMBERS = {
    "latency": ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "loadavg"),
    "parity": ("max_abs", "cosine", "sqnr_db", "top1", "top5"),
    "paired": ("ratio", "int8_p50_ms", "fp32_p50_ms", "rounds", "rounds_int8_faster"),
    "paired_baseline": ("speedup", "torch_p50_ms", "p50_ms", "rounds"),
}
_FINITE_WORDS = ("inf", "-inf", "nan")
_WORDS_OK = ("max_abs", "sqnr_db")  # the metrics that may be non-finite (identical outputs: SQNR inf)


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _is(v: Any, types: tuple) -> bool:
    return isinstance(v, types) and not (isinstance(v, bool) and bool not in types)


def _want(types: tuple) -> str:
    names = {str: "a string", dict: "an object", list: "a list", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types if not (t is int and float in types)))


def _check_row(r: Any, where: str) -> None:
    if not isinstance(r, dict):
        raise ArtifactError(f"{where} must be an object, got {_type_name(r)}")
    missing = [k for k in ("model", "target", "precision", "device_id", "status") if k not in r]
    if missing:
        raise ArtifactError(f"{where} lacks {', '.join(missing)}")
    for k, types in _ROW_TYPES.items():
        if k in r and not _is(r[k], types):
            raise ArtifactError(f"{where}: '{k}' must be {_want(types)}, got {_type_name(r[k])}")
    if r["status"] not in STATUSES:
        raise ArtifactError(f"{where}: bad status {r['status']!r}", hint=f"one of {', '.join(STATUSES)}")
    if r.get("input_shape") is not None and not all(_is(n, (int,)) for n in r["input_shape"]):
        raise ArtifactError(f"{where}: 'input_shape' must be a list of integers")
    for k in ("flags", "notes", "warnings"):
        if not all(isinstance(x, str) for x in r.get(k) or []):
            raise ArtifactError(f"{where}: '{k}' must be a list of strings")
    for obj, keys in _NESTED_NUMBERS.items():
        d = r.get(obj) or {}
        for k in keys:
            if obj.startswith("paired") and d and k not in d:  # a pair that ran has all its figures
                raise ArtifactError(f"{where}: '{obj}' lacks '{k}'")
            v = d.get(k)
            if v is not None and not _is(v, _NUM) and not (k in _WORDS_OK and v in _FINITE_WORDS):
                raise ArtifactError(f"{where}: '{obj}.{k}' must be a number or null, got {_type_name(v)}")
    par = r.get("parity") or {}
    fails = par.get("failures")
    if fails is not None and not (isinstance(fails, list) and all(isinstance(x, str) for x in fails)):
        raise ArtifactError(f"{where}: 'parity.failures' must be a list of strings")
    if "busy-machine" in r.get("flags", []) and not r.get("latency"):
        raise ArtifactError(f"{where}: flag 'busy-machine' on a row without latency")
    yard = par.get("reference_stability")
    if yard is not None and not (isinstance(yard, dict) and all(
            yard.get(k) is None or _is(yard[k], _NUM) for k in ("top1", "cosine", "sqnr_db"))
            and _is(yard.get("amplitude_steps", 0.5), _NUM)):
        raise ArtifactError(f"{where}: 'parity.reference_stability' must be an object of numbers or null")


def _check_device(fp: Any, where: str) -> None:
    if not isinstance(fp, dict):
        raise ArtifactError(f"{where} must be an object, got {_type_name(fp)}")
    for k, types in (("name", (str,)), ("cpu", (dict,)), ("os", (dict,)),
                     ("python", (dict, _NONE)), ("gpus", (list,)), ("runtimes", (dict, _NONE)),
                     ("memory_gb", (*_NUM, _NONE))):
        if k in fp and not _is(fp[k], types):
            raise ArtifactError(f"{where}: '{k}' must be {_want(types)}, got {_type_name(fp[k])}")
    cpu = fp.get("cpu") or {}
    for k in ("usable_threads", "cores", "threads"):
        if cpu.get(k) is not None and not _is(cpu[k], _NUM):
            raise ArtifactError(f"{where}: 'cpu.{k}' must be a number or null, got {_type_name(cpu[k])}")
    isa = cpu.get("isa")
    if isa is not None and not (isinstance(isa, list) and all(isinstance(x, str) for x in isa)):
        raise ArtifactError(f"{where}: 'cpu.isa' must be a list of strings")
    if not all(isinstance(g, dict) for g in fp.get("gpus") or []):
        raise ArtifactError(f"{where}: 'gpus' must be a list of objects")


def validate(report: Any, where: str = "report") -> dict[str, Any]:
    """Check a parsed report JSON whole; fill every row's missing optional fields. Raises a
    one-line :class:`ArtifactError` naming the first field that does not fit the schema."""
    if not isinstance(report, dict):
        raise ArtifactError(f"{where} is not an edgekit report (top level is not an object)")
    if report.get("schema") != SCHEMA:
        raise ArtifactError(f"{where}: unknown report schema {report.get('schema')!r}",
                            hint=f"expected {SCHEMA}: write it with 'edgekit bench' or 'edgekit matrix'")
    for key, typ in (("rows", list), ("devices", dict)):
        if not isinstance(report.get(key), typ):
            raise ArtifactError(f"{where}: '{key}' is missing or not a {typ.__name__}")
    for key, types in (("kind", (str, _NONE)), ("created", (str, _NONE)), ("edgekit", (str, _NONE)),
                       ("settings", (dict, _NONE)), ("checks", (list, _NONE)), ("sources", (list, _NONE))):
        if key in report and not _is(report[key], types):
            raise ArtifactError(f"{where}: '{key}' must be {_want(types)}, got {_type_name(report[key])}")
    for key in ("checks", "sources"):
        if not all(isinstance(c, dict) for c in report.get(key) or []):
            raise ArtifactError(f"{where}: '{key}' must be a list of objects")
    if not all(isinstance(c.get("message"), str) and isinstance(c.get("check"), str)
               for c in report.get("checks") or []):
        raise ArtifactError(f"{where}: every check needs a string 'check' and 'message'")
    for dev, fp in report["devices"].items():
        _check_device(fp, f"{where}: device {dev!r}")
    for i, r in enumerate(report["rows"]):
        _check_row(r, f"{where}: row {i}")
        if r["device_id"] not in report["devices"]:
            raise ArtifactError(f"{where}: row {i} names device {r['device_id']!r} with no fingerprint")
        for k, v in _ROW_DEFAULTS.items():
            r.setdefault(k, v.copy() if isinstance(v, (dict, list)) else v)
    for key, empty in (("checks", []), ("sources", []), ("settings", {})):
        if report.get(key) is None:
            report[key] = empty
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"report not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or not UTF-8 (a binary file)
        why = first_line(exc, None)
        raise ArtifactError(f"{path} is not readable JSON: {why}") from None
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
