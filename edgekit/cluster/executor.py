"""The matrix on a Ray cluster: the same cells as :class:`edgekit.matrix.EmbeddedExecutor`,
as tasks.

- an **export** task per cell (``num_cpus=1``, any node): export + parity as locally, then
  the artifact's bytes and the torch reference outputs go to the object store; the
  driver writes the artifact into ``OUT/artifacts`` (verified) and records it for reuse;
- per device node, a **device** task per cell (``device:<name>`` = 1 and all the node's
  CPUs): the artifact verified on arrival, parity on this hardware against the shipped
  reference outputs, latency; a **baseline** task per model (torch eager) and, at the
  end, a **pairs** task per model (the interleaved INT8/FP32 and torch-eager pairs).

Ray retries a task once when its node dies (``max_retries=1``): an export goes to any
other node, a device task waits for its device. A device whose node has been gone for
``device_timeout`` seconds gets its remaining cells as error rows naming the node; the
run completes either way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..bench.progress import Progress
from ..bench.run import error_text
from ..errors import UsageError
from ..cells import cell_folder
from ..matrix import (MatrixPlan, _Index, baseline_error_row, model_reference, result_text,
                      unavailable_row)
from ..report.schema import make_row
from . import require_ray, tasks
from .connect import connect, device_nodes, node_names
from .transport import land, pack

RETRIES = 1


@dataclass
class Job:
    kind: str                      # probe | export | device | baseline | pairs
    label: str
    device: str | None = None
    on_done: Callable[[Any], None] = lambda value: None
    on_fail: Callable[[str], None] = lambda why: None
    extra: dict[str, Any] = field(default_factory=dict)


class RayExecutor:
    """``address``: as ``--cluster`` takes it. ``on_result(job_kind, label, done, total)``: a
    hook after every finished task (tests use it to kill a node mid-run)."""

    def __init__(self, address: str | None = "ray", device_timeout: float = 120.0, on_result=None):
        self.address = address
        self.device_timeout = device_timeout
        self.on_result = on_result
        self.prov: list[dict[str, Any]] = []

    # -- running tasks -------------------------------------------------------------------
    def _remote(self, fn, **options):
        import torch

        ray = require_ray()
        # Ray workers start with one torch thread (OMP_NUM_THREADS = their num_cpus); the torch
        # reference's float rounding depends on the thread count, so tasks use the driver's
        # count and a cell's parity figures equal the embedded run's to the last bit
        pinned = tasks.with_torch_threads(fn, torch.get_num_threads())
        return ray.remote(pinned).options(max_retries=RETRIES, retry_exceptions=False, **options)

    def _device_options(self, name: str) -> dict[str, Any]:
        node = self.devices.get(name)
        return {"resources": {f"device:{name}": 1}, "num_cpus": node.cpus if node else 1}

    def _submit(self, job: Job, fn, *args, num_returns: int = 1, **options):
        refs = self._remote(fn, num_returns=num_returns, **options).remote(*args)
        first = refs[0] if num_returns > 1 else refs
        self.pending[first] = job
        return refs

    def _drain(self, progress: Progress | None) -> None:
        ray = require_ray()
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            for ref in ready:
                job = self.pending.pop(ref)
                try:
                    job.on_done(ray.get(ref))
                except Exception as exc:  # the node died (twice), the task was cancelled, a lost object, ...
                    job.on_fail(self._why(job, exc))
                if progress and job.kind != "probe":
                    progress.start(job.label)
                    progress.advance(job.extra.get("result", ""))
                if self.on_result:
                    self.on_result(job.kind, job.label, progress.done if progress else 0,
                                   progress.total if progress else 0)
            self._watch_devices()

    def _why(self, job: Job, exc: BaseException) -> str:
        text = error_text(exc).split(" Traceback")[0][:300]
        if job.device:
            node = self.devices.get(job.device) or self.lost_nodes.get(job.device)
            where = f"device {job.device} ({node.describe()})" if node else f"device {job.device}"
            return f"{where}: {text}"
        return text

    def _watch_devices(self) -> None:
        """Devices whose node left: wait ``device_timeout`` for it to come back, then give up
        on their pending tasks (error rows naming the node)."""
        ray = require_ray()
        alive = device_nodes()
        now = time.monotonic()
        for name in list(self.devices):
            if name in alive:
                self.devices[name] = alive[name]
                self.lost_since.pop(name, None)
                continue
            self.lost_nodes[name] = self.devices[name]
            since = self.lost_since.setdefault(name, now)
            if now - since < self.device_timeout:
                continue
            node = self.lost_nodes[name]
            why = (f"device {name}: {node.describe()} left the cluster and did not come back within "
                   f"{self.device_timeout:g} s")
            for ref, job in list(self.pending.items()):
                if job.device == name:
                    ray.cancel(ref, force=False)
                    del self.pending[ref]
                    job.on_fail(why)
                    self.prov.append({"kind": job.kind, "cell": job.label, "device": name, "node": node.node_id,
                                      "status": "error", "error": why})
                    if self._progress:
                        self._progress.start(job.label)
                        self._progress.advance("ERROR " + why[:60])

    # -- the matrix ----------------------------------------------------------------------
    def run(self, plan: MatrixPlan, console, quiet: bool = False):
        """(rows, {device_id: fingerprint}, {"cluster": provenance and nodes})."""
        ray = require_ray()
        where = connect(self.address)
        console.info(f"cluster: {where}")
        self.pending: dict[Any, Job] = {}
        self.lost_since: dict[str, float] = {}
        self.lost_nodes: dict[str, Any] = {}
        self._progress = None
        self.devices = device_nodes()
        if not self.devices:
            raise UsageError("the Ray cluster has no device node (no node holds a 'device:NAME' resource)",
                             hint="join one with 'edgekit worker --device NAME --address HOST:PORT'")
        fps, targets = self._probe(console, [t for t in plan.targets if t not in plan.unavailable])
        cfg = plan.cfg
        index = _Index(cfg.out)
        rows: list[dict[str, Any]] = []
        packed: dict[str, Any] = {}  # driver folder → ObjectRef of (bytes, sha) for the pairs tasks
        names = list(self.devices)
        total = len(plan.models) * (plan.cells_per_model * (1 + len(names)) + len(names))
        self._progress = progress = Progress(total, quiet=quiet)
        command = "edgekit matrix (--cluster ray)"
        for model in plan.models:
            shape = list(cfg.input_shape) if cfg.input_shape else None
            try:
                model_name, shape, weights, _ref = model_reference(plan, model)
            except Exception as exc:  # every device gets the error as its baseline row
                for name in names:
                    rows.append(baseline_error_row(model, fps[name]["device_id"], exc, shape))
                    progress.start(f"{model} torch eager fp32 on {name}")
                    progress.advance(result_text(rows[-1]))
                for t in plan.targets:
                    for p in plan.precisions:
                        for name in names:
                            rows.append(make_row(model=model, target=t, precision=p, device_id=fps[name]["device_id"],
                                                 status="error", error=f"model could not be built: {error_text(exc)}",
                                                 input_shape=shape))
                        progress.done += 1 + len(names)
                continue
            for name in names:
                base = dict(model=model_name, target="torch", precision="fp32", device_id=fps[name]["device_id"],
                            baseline=True, input_shape=shape)
                self._submit(self._row_job("baseline", f"{model_name} torch eager fp32 on {name}", name, rows, base),
                             tasks.baseline, name, cfg, plan.bench, model, **self._device_options(name))
            for target in plan.targets:
                for precision in plan.precisions:
                    self._cell(plan, model, model_name, target, precision, shape, weights, index, fps, targets,
                               rows, packed, command)
        self._drain(progress)
        progress.close()
        self._pairs(plan, rows, packed, fps, console)
        self._summary(console)
        devices = {fps[n]["device_id"]: fps[n] for n in fps}
        return rows, devices, {"cluster": {"where": where, "nodes": self._nodes(), "cells": self.prov}}

    def _probe(self, console, target_names: list[str]) -> tuple[dict[str, dict], dict[str, dict]]:
        fps: dict[str, dict] = {}
        targets: dict[str, dict] = {}

        def done(name):
            def f(value):
                fp = value["fingerprint"]
                node = self.devices[name]
                fp["cluster_node"] = {"device": name, "node_id": node.node_id, "ip": node.ip, "host": value["host"]}
                fps[name], targets[name] = fp, value["targets"]
                self.prov.append({k: v for k, v in value.items() if k not in ("fingerprint", "targets")})
            return f

        for name in self.devices:
            self._submit(Job("probe", f"probe {name}", name, on_done=done(name),
                             on_fail=lambda why, name=name: console.warn(f"device {name} left before it was "
                                                                         f"probed: {why}")),
                         tasks.probe, name, target_names, **self._device_options(name))
        self._drain(None)
        for name in [n for n in self.devices if n not in fps]:
            del self.devices[name]
        if not fps:
            raise UsageError("no device node answered", hint="check the cluster with 'ray status'")
        return fps, targets

    def _row_job(self, kind: str, label: str, device: str, rows: list, fallback: dict) -> Job:
        job = Job(kind, label, device)

        def done(value):
            row, prov = value
            rows.append(row)
            self.prov.append(prov)
            job.extra["result"] = result_text(row)

        def fail(why):
            rows.append(make_row(**{**(fallback or {}), "status": "error", "error": why}))
            job.extra["result"] = "ERROR " + why[:60]
            self.prov.append({"kind": kind, "cell": label, "device": device, "status": "error", "error": why})

        job.on_done, job.on_fail = done, fail
        return job

    def _cell(self, plan, model, model_name, target, precision, shape, weights, index, fps, targets, rows, packed,
              command):
        cfg = plan.cfg
        names = list(self.devices)
        label = f"{model_name} {target} {precision}"
        if target in plan.unavailable:
            for name in names:
                rows.append(unavailable_row(plan, model_name, target, precision, fps[name]["device_id"], shape,
                                            where="on the driver"))
            self._progress.done += 1 + len(names)
            return
        from ..bench.run import target_versions
        from ..matrix import _request

        folder = cell_folder(cfg.out, model, target, precision).resolve()
        reused = None
        if cfg.reuse and weights:
            request = _request(cfg, model, target, precision, folder)
            if index.reusable(folder.name, folder, request, weights, target_versions(target)) is not None:
                reused = pack(folder, final_only=True)
        meta_ref, whole_ref, data_ref, pairs_ref = self._remote(tasks.export_cell, num_returns=4, num_cpus=1).remote(
            cfg, model, target, precision, shape, str(folder), command, reused)
        ray = require_ray()
        job = Job("export", f"export {label}")

        def done(meta):
            self.prov.append(meta["prov"])
            if meta["row"] is not None:
                job.extra["result"] = result_text(meta["row"])
                return
            if not meta["reused"]:
                land(ray.get(whole_ref), meta["manifest_sha256"], folder)
                if weights:
                    index.record(folder.name, folder, weights, target_versions(target))
            packed[str(folder)] = (data_ref, meta["manifest_sha256"])
            job.extra["result"] = "reused" if meta["reused"] else "built"

        def fail(why):
            job.extra["result"] = "ERROR " + why[:60]
            self.prov.append({"kind": "export", "cell": label, "status": "error", "error": why})

        job.on_done, job.on_fail = done, fail
        self.pending[meta_ref] = job
        for name in names:
            ok, why = (targets.get(name) or {}).get(target, [True, ""])
            base = dict(model=model_name, target=target, precision=precision, device_id=fps[name]["device_id"],
                        input_shape=shape, versions=target_versions(target), threads=cfg.threads, device=cfg.device)
            if not ok:
                rows.append(make_row(**base, status="skipped", error=f"{target} unavailable on device {name}: {why}"))
                self._progress.done += 1
                continue
            self._submit(self._row_job("device", f"{label} on {name}", name, rows, fallback=base),
                         tasks.device_cell, name, cfg, plan.bench, model_name, target, precision, shape, str(folder),
                         meta_ref, data_ref, pairs_ref, **self._device_options(name))

    def _pairs(self, plan, rows, packed, fps, console) -> None:
        from ..bench import run as bench_run

        alive = device_nodes()
        by_id = {fps[n]["device_id"]: n for n in fps if n in alive}
        groups: dict[tuple, list] = {}
        for r in rows:
            if r["device_id"] in by_id and not r.get("baseline") and str(r.get("artifact")) in packed \
                    and r["status"] in ("ok", "parity-fail"):
                groups.setdefault((by_id[r["device_id"]], r["model"]), []).append(r)
        if not groups:
            return
        console.info("timing the interleaved pairs (INT8 vs FP32, each artifact vs torch eager) on each device ...")
        for (name, model), group in groups.items():
            art = {r["artifact"]: packed[r["artifact"]] for r in group}
            job = Job("pairs", f"{model} pairs on {name}", name)

            def done(value, group=group):
                new_rows, prov = value
                for old, new in zip(group, new_rows):
                    old.update(new)
                self.prov.append(prov)

            def fail(why, group=group):
                for r in group:
                    r.setdefault("warnings", []).append(f"interleaved timing failed: {why}")

            job.on_done, job.on_fail = done, fail
            self._submit(job, tasks.pairs, name, plan, model, group, art, bench_run.PAIRED_SECONDS,
                         **self._device_options(name))
        self._drain(None)

    def _nodes(self) -> list[dict[str, Any]]:
        names = node_names()
        out = []
        for n in require_ray().nodes():
            ran = [p for p in self.prov if p.get("node") == n["NodeID"]]
            out.append({"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "alive": bool(n.get("Alive")),
                        "devices": sorted(k.split(":", 1)[1] for k in (n.get("Resources") or {})
                                          if k.startswith("device:")),
                        "name": names.get(n["NodeID"]),
                        "tasks": {k: sum(p["kind"] == k for p in ran) for k in ("export", "device", "baseline",
                                                                                "pairs") if any(p["kind"] == k
                                                                                                for p in ran)}})
        return out

    def _summary(self, console) -> None:
        for n in self._nodes():
            devs = f" device {', '.join(n['devices'])}" if n["devices"] else ""
            tasks_ = ", ".join(f"{v} {k}" for k, v in n["tasks"].items()) or "no tasks"
            console.info(f"node {n['name']}{devs}: {tasks_}{'' if n['alive'] else ' (left the cluster)'}")
