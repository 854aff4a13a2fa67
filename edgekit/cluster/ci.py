"""``edgekit ci --cluster``: the parity gate's cells as Ray tasks, one JUnit file.

Each cell is :func:`edgekit.ci.run_ci_cell` (the function a local run uses) in a task with
``num_cpus=1`` on any node; it exports into a node-local folder and sends the artifact
back as verified bytes, landed in ``OUT/artifacts`` here. A task whose node dies is
retried once elsewhere (``max_retries=1``); if that fails too, the cell is an ``error``
testcase naming what happened. The cases come back in the project file's order.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import require_ray
from .connect import connect, node_names
from .tasks import _done, _here


def ci_cell(cfg, cell, debug: bool = False):
    """On a node: (case, row, fingerprint, packed artifact or None, provenance)."""
    from ..bench.device import fingerprint
    from ..ci import run_ci_cell
    from ..console import Console
    from ..matrix import _Sink
    from .transport import pack

    prov = _here()
    fp = fingerprint()
    with tempfile.TemporaryDirectory(prefix="edgekit-ci-") as tmp:
        case, row = run_ci_cell(replace(cfg, out=Path(tmp)), cell, fp["device_id"], Console(quiet=True, err=_Sink()),
                                debug)
        art = row.get("artifact")
        data = pack(Path(art)) if art and Path(art).is_dir() else None
    return case, row, fp, data, _done(prov, kind="export", cell=cell.name, device=None, status=row["status"])


class RayCiExecutor:
    def __init__(self, address: str | None = "ray"):
        self.address = address

    def run(self, cfg, console, debug: bool = False):
        """(cases, rows, {device_id: fingerprint}, {"cluster": provenance})."""
        from ..bench.run import error_text, target_versions
        from ..report.junit import Case
        from ..report.schema import make_row
        from .transport import land

        ray = require_ray()
        where = connect(self.address)
        console.info(f"cluster: {where}")
        task = ray.remote(ci_cell).options(num_cpus=1, max_retries=1, retry_exceptions=False)
        refs = {task.remote(cfg, cell, debug): i for i, cell in enumerate(cfg.cells)}
        results: list[Any] = [None] * len(cfg.cells)
        devices: dict[str, dict] = {}
        prov: list[dict] = []
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = refs[ready[0]]
            cell = cfg.cells[i]
            done += 1
            try:
                case, row, fp, data, p = ray.get(ready[0])
            except Exception as exc:  # the node died twice, ...
                msg = f"{cell.name}: {error_text(exc)[:300]}"
                case = Case(cell.name, f"edgekit.parity.{cell.target}", error=msg)
                row = make_row(model=cell.model, target=cell.target, precision=cell.precision, device_id="cluster",
                               versions=target_versions(cell.target), status="error", error=msg)
                devices.setdefault("cluster", {"device_id": "cluster", "name": "the cluster (node lost)"})
                p = {"kind": "export", "cell": cell.name, "status": "error", "error": msg}
            else:
                devices[fp["device_id"]] = fp
                if data is not None:
                    dest = (cfg.out / "artifacts" / Path(row["artifact"]).name).resolve()
                    land(data[0], data[1], dest)
                    row["artifact"] = str(dest)
                    if case.properties:
                        case.properties["artifact"] = str(dest)
                p["node_name"] = node_names().get(p.get("node"), p.get("node"))
            prov.append(p)
            results[i] = (case, row)
            verdict = "error" if case.error else "FAILED" if case.failure else "skipped" if case.skipped else "passed"
            console.info(f"[{done}/{len(cfg.cells)}] {cell.name}: {verdict}"
                         + (f" on {p['node_name']}" if p.get("node_name") else ""))
        return [r[0] for r in results], [r[1] for r in results], devices, {"cluster": {"where": where, "cells": prov}}
