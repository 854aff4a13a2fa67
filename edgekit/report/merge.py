"""Join reports from several devices into one: a column per device, one set of plots.

On a fleet each device runs ``edgekit bench`` (or ``edgekit matrix``) itself and the
JSON files are merged here: no scheduler, no remote execution. Rows are identified by
(model, target, precision, device_id, runtime versions, input shape, threads, device);
when two inputs hold the same measurement, the one given later wins and the merge
says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from .schema import finalize, load_report, new_report, row_key


def merge_reports(reports: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """One ``merged`` report from already-validated reports (later ones win on equal keys)."""
    if not reports:
        raise UsageError("nothing to merge", hint="pass two or more report JSON files")
    names = list(names or [f"report {i + 1}" for i in range(len(reports))])
    devices: dict[str, dict[str, Any]] = {}
    rows: dict[tuple, dict[str, Any]] = {}
    sources, replaced = [], []
    for name, rep in zip(names, reports):
        for dev, fp in rep["devices"].items():
            devices[dev] = fp
        for r in rep["rows"]:
            k = row_key(r)
            if k in rows:
                replaced.append(f"{r['model']}/{r['target']}/{r['precision']} on {r['device_id']} from {name}")
            rows[k] = dict(r)
        sources.append({"name": name, "kind": rep.get("kind"), "created": rep.get("created"),
                        "devices": sorted({r["device_id"] for r in rep["rows"]}), "rows": len(rep["rows"])})
        for s in rep.get("sources") or []:  # merging merged reports keeps their provenance
            sources.append({**s, "via": name})
    settings = {"merged": len(reports)}
    out = new_report("merged", list(rows.values()), devices, settings)
    out["sources"] = sources
    out["replaced"] = replaced
    return finalize(out)


def merge_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    if len(paths) < 1:
        raise UsageError("nothing to merge", hint="pass two or more report JSON files")
    return merge_reports([load_report(p) for p in paths], [str(p) for p in paths])
