"""``edgekit matrix``: export + parity + latency for every (model, target, precision).

Each model first gets its torch eager FP32 baseline, measured in the same run and on
the same device, so every speed-up in the table is relative to a number measured
minutes apart under the same load. Each cell then runs ``edgekit.pipeline.export``
(parity included, latency not: the matrix measures every artifact itself with the
same settings) and :func:`edgekit.bench.run.bench_artifact`. A failing cell never
stops the others: its error message becomes the cell. A cell whose artifact folder
was built from an identical request (same request dict, same model weights, same
runtime versions) and is unchanged on disk is reused, not rebuilt.

Where the cells run is the executor's business: :class:`EmbeddedExecutor` (the default)
runs them here one after the other; ``edgekit.cluster.executor.RayExecutor``
(``--cluster``) runs the same functions (:func:`build_cell`, :func:`measure_cell`,
``bench_torch``, :func:`pair_rows`) as Ray tasks on the nodes of a device fleet.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench.device import fingerprint
from .bench.progress import Progress
from .cells import Cell, cell_folder, cell_request, export_cell
from .bench.run import (BenchSettings, bench_artifact, bench_torch, error_text, pair_int8_with_fp32,
                        pair_with_baseline, target_versions, torch_reference)
from .errors import EdgekitError, UsageError
from .report.schema import make_row, manifest_parity, new_report
from .specs import check_precision

DEFAULT_MODELS = ("mobilenet_v3", "shufflenet_v2", "efficientnet_b0")
DEFAULT_PRECISIONS = ("fp32", "int8")
INDEX = "matrix-index.json"


@dataclass
class MatrixConfig:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    targets: list[str] = field(default_factory=lambda: ["all"])
    precisions: list[str] = field(default_factory=lambda: list(DEFAULT_PRECISIONS))
    out: Path = Path("matrix")
    threads: int | None = None
    warmup: int = 5
    iters: int | None = None
    seconds: float = 1.0
    batch: int = 1
    input_shape: tuple[int, ...] | None = None
    calib: Path | None = None
    samples: int | None = None
    pretrained: bool = False
    device: str | None = None
    tolerance: dict[str, Any] = field(default_factory=dict)
    reuse: bool = True
    label: str | None = None
    # target -> that target's own options for its cells (edgekit export's flags by dest, e.g.
    # {"openvino": {"ov_int8_weights": "paired"}}); other targets' cells get none
    target_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {"threads": self.threads, "batch": self.batch, "warmup": self.warmup, "iters": self.iters,
                "seconds": None if self.iters else self.seconds,
                "input_shape": "x".join(map(str, self.input_shape)) if self.input_shape else None,
                "device": self.device, "calib": str(self.calib) if self.calib else None,
                **({"target_options": self.target_options} if self.target_options else {})}


def resolve_targets(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(target names, {name: why unavailable}); ``all`` expands to every registered target.
    Unknown names raise UnknownTargetError (a typo fails before any work)."""
    from .targets import get_target, resolve_target_name, target_names

    wanted: list[str] = []
    for n in names:
        for key in (target_names() if n == "all" else [resolve_target_name(n)]):
            if key not in wanted:
                wanted.append(key)
    unavailable = {}
    for key in list(wanted):
        try:
            ok, why = get_target(key).available()
        except EdgekitError as exc:
            ok, why = False, str(exc)
        if not ok:
            unavailable[key] = why
    if "all" in names:  # 'all' means all that can run here; named ones are reported as skipped
        wanted = [t for t in wanted if t not in unavailable or t in names]
    return wanted, unavailable


def resolve_models(names: list[str], console=None) -> list[str]:
    from .models.registry import resolve_name
    from .models.user import is_user_ref

    out = []
    for n in names:
        if is_user_ref(n):
            out.append(n)
            continue
        canon, alias = resolve_name(n)  # UnknownModelError with suggestions
        if alias and console:
            console.info(f"model '{alias}' resolved to '{canon}'")
        if canon not in out:
            out.append(canon)
    return out


def weights_digest(module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update((t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy().tobytes())
    return h.hexdigest()


def _json_norm(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d, default=str))


class _Index:
    """What the matrix built in ``out``: per cell, the weights digest, the runtime versions
    and the manifest's sha256, to decide whether a cell can be reused."""

    def __init__(self, out: Path):
        self.path = out / INDEX
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}

    def reusable(self, cell: str, folder: Path, request, weights: str, versions: dict[str, str]):
        """The manifest when the cell can be reused, else None."""
        from .artifact import MANIFEST, Manifest, sha256_path

        entry = self.data.get(cell)
        mpath = folder / MANIFEST
        if not entry or not mpath.is_file():
            return None
        if entry.get("weights") != weights or entry.get("versions") != versions:
            return None
        if entry.get("manifest_sha256") != sha256_path(mpath):
            return None
        try:
            manifest = Manifest.read(folder)
            for s in manifest.stages:
                s.verify()
        except EdgekitError:
            return None
        if _json_norm(manifest.request) != _json_norm(request.to_dict()):
            return None
        return manifest

    def record(self, cell: str, folder: Path, weights: str, versions: dict[str, str]) -> None:
        from .artifact import MANIFEST, sha256_path

        self.data[cell] = {"weights": weights, "versions": versions,
                           "manifest_sha256": sha256_path(folder / MANIFEST)}
        from .report.schema import write_text

        write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def _request(cfg: MatrixConfig, model: str, target: str, precision: str, folder: Path):
    options = dict(cfg.target_options.get(target) or {})
    cell = Cell(model=model, target=target, precision=precision, input_shape=cfg.input_shape, batch=cfg.batch,
                calib=cfg.calib, pretrained=cfg.pretrained, samples=cfg.samples, tolerance=dict(cfg.tolerance),
                options=options)
    return cell_request(cell, folder.resolve(), threads=cfg.threads, device=cfg.device,
                        seconds=None if cfg.iters else cfg.seconds)



def result_text(row: dict[str, Any]) -> str:
    if row["status"] == "error":
        return "ERROR " + (row.get("error") or "")[:80]
    if row["status"] == "skipped":
        return "skipped"
    p50 = (row.get("latency") or {}).get("p50_ms")
    tail = f"p50 {p50:.3g} ms" if p50 else ""
    tail += " (reused)" if row.get("reused") else ""
    par = row.get("parity") or {}
    if row.get("precision") != "fp32" and par:  # the two references (edgekit/verdict.py)
        from .report.table import fidelity_cell, quant_cell

        tail += f" [vs FP32 {quant_cell(par)}, fidelity {fidelity_cell(par)}]"
    return ("PARITY FAIL " if row["status"] == "parity-fail" else "ok ") + tail


@dataclass
class Built:
    """One cell's artifact, ready to measure: built now or reused from an identical request."""

    folder: Path
    manifest: Any
    reused: bool = False
    warnings: list[str] = field(default_factory=list)


def cell_base(cfg: MatrixConfig, model: str, target: str, precision: str, device_id: str,
              shape: list[int] | None) -> dict[str, Any]:
    """The fields every row of a cell carries, whatever happened to it."""
    return dict(model=model, target=target, precision=precision, device_id=device_id,
                versions=target_versions(target), threads=cfg.threads, device=cfg.device, input_shape=shape)


def build_cell(cfg: MatrixConfig, model: str, target: str, precision: str, base: dict[str, Any],
               weights: str | None, index: "_Index | None", pipeline_console) -> "Built | dict[str, Any]":
    """Export (or reuse) one cell's artifact into ``cfg.out``; a skipped or error row when
    there is none. Never raises for the cell's own failures. ``index`` None: never reuse."""
    from .targets import get_target

    exporter = get_target(target)
    if precision not in exporter.precisions:
        return make_row(**base, status="skipped", error=f"{target} does not support {precision}")
    folder = cell_folder(cfg.out, model, target, precision)
    request = _request(cfg, model, target, precision, folder)
    if cfg.reuse and weights and index is not None:
        manifest = index.reusable(folder.name, folder, request, weights, base["versions"])
        if manifest is not None:
            return Built(folder, manifest, reused=True)
    result, error = export_cell(request, pipeline_console)
    if result is None:
        return make_row(**base, status="error", error=error,
                        warnings=list(getattr(pipeline_console, "warnings", []))[-5:])
    if weights and index is not None:
        index.record(folder.name, folder, weights, base["versions"])
    return Built(folder, result.manifest, warnings=list(getattr(pipeline_console, "warnings", [])))


def measure_cell(built: Built, bench: BenchSettings, device_id: str, shape: list[int] | None,
                 parity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time a built cell's final stage on this device: its row. ``parity``: the final stage's
    parity as checked on this device (default: the export's, from the manifest)."""
    row = bench_artifact(built.folder, bench, device_id, manifest=built.manifest)
    row["input_shape"] = row["input_shape"] or shape
    row.update(reused=built.reused, warnings=sorted(set(built.warnings)))
    if parity is not None:
        row["parity"] = parity
        if row["status"] in ("ok", "parity-fail"):
            row["status"] = "ok" if parity.get("all_passed") else "parity-fail"
    if row["parity"] is None and row["status"] == "ok":
        row["parity"] = manifest_parity(built.manifest)
    return row


def run_cell(cfg: MatrixConfig, model: str, target: str, precision: str, bench: BenchSettings, device_id: str,
             weights: str | None, index: _Index, pipeline_console, shape: list[int] | None = None) -> dict[str, Any]:
    """Export (or reuse), then measure, one cell. Never raises for the cell's own failures.
    ``shape``: the model's input shape, recorded on rows that never got an artifact so that
    merged reports line them up with the same cell measured elsewhere."""
    built = build_cell(cfg, model, target, precision, cell_base(cfg, model, target, precision, device_id, shape),
                       weights, index, pipeline_console)
    return built if isinstance(built, dict) else measure_cell(built, bench, device_id, shape)


@dataclass
class MatrixPlan:
    """A run resolved on the machine that drives it: what every executor runs."""

    cfg: MatrixConfig
    models: list[str]
    targets: list[str]
    precisions: list[str]
    unavailable: dict[str, str]
    bench: BenchSettings

    @property
    def cells_per_model(self) -> int:
        return len(self.targets) * len(self.precisions)


def model_reference(plan: MatrixPlan, model: str):
    """(model name, input shape, weights digest, reference) as export resolves the model; raises."""
    cfg = plan.cfg
    ref = torch_reference(model, cfg.input_shape, cfg.batch, pretrained=cfg.pretrained)
    return ref[0], list(ref[2][0].shape), weights_digest(ref[1]), ref


def baseline_error_row(model: str, device_id: str, exc: BaseException, shape: list[int] | None) -> dict[str, Any]:
    return make_row(model=model, target="torch", precision="fp32", device_id=device_id, baseline=True,
                    versions=target_versions("torch"), status="error", error=error_text(exc), input_shape=shape)


def unavailable_row(plan: MatrixPlan, model: str, target: str, precision: str, device_id: str,
                    shape: list[int] | None, where: str = "here") -> dict[str, Any]:
    return make_row(model=model, target=target, precision=precision, device_id=device_id, status="skipped",
                    error=f"{target} unavailable {where}: {plan.unavailable[target]}", input_shape=shape)


def pair_rows(rows: list[dict[str, Any]], references: dict[str, tuple], plan: MatrixPlan, log) -> None:
    """The interleaved INT8-vs-FP32 and torch-eager pairs, in place (both executors)."""
    if "int8" in plan.precisions and "fp32" in plan.precisions:
        log("timing each INT8 artifact against its FP32 sibling, interleaved ...")
        pair_int8_with_fp32(rows, plan.bench, log=log)
    log("timing each artifact against torch eager FP32, interleaved ...")
    pair_with_baseline(rows, references, plan.bench, log=log)


class EmbeddedExecutor:
    """Every cell in this process, one after the other: the default, no cluster."""

    def run(self, plan: MatrixPlan, console, quiet: bool = False):
        """(rows, {device_id: fingerprint}, extra report fields)."""
        from .console import Console

        cfg = plan.cfg
        fp = fingerprint(cfg.label)
        dev = fp["device_id"]
        index = _Index(cfg.out)
        progress = Progress(len(plan.models) * (1 + plan.cells_per_model), quiet=quiet)
        rows: list[dict[str, Any]] = []
        references: dict[str, tuple] = {}
        for model in plan.models:
            progress.start(f"{model} torch eager fp32")
            weights = None
            shape = list(cfg.input_shape) if cfg.input_shape else None
            try:
                model_name, shape, weights, ref = model_reference(plan, model)
                references[model_name] = ref
                row = bench_torch(model, plan.bench, dev, reference=ref)
            except Exception as exc:
                model_name = model
                row = baseline_error_row(model, dev, exc, shape)
            rows.append(row)
            progress.advance(result_text(row))
            for target in plan.targets:
                for precision in plan.precisions:
                    progress.start(f"{model_name} {target} {precision}")
                    if target in plan.unavailable:
                        row = unavailable_row(plan, model_name, target, precision, dev, shape)
                    else:
                        row = run_cell(cfg, model, target, precision, plan.bench, dev, weights, index,
                                       Console(quiet=True, err=_Sink()), shape)
                        row["model"] = model_name
                    rows.append(row)
                    progress.advance(result_text(row))
        progress.close()
        pair_rows(rows, references, plan, console.info)
        return rows, {dev: fp}, {}


def run_matrix(cfg: MatrixConfig, console=None, quiet: bool = False, executor=None) -> dict[str, Any]:
    """Run every cell; returns the ``matrix`` report (also written by the CLI). ``executor``:
    where the cells run (default :class:`EmbeddedExecutor`; ``edgekit.cluster`` has Ray's)."""
    from .console import Console

    console = console or Console(quiet=quiet)
    if not cfg.models:
        raise UsageError("no models to run", hint="name models, e.g. 'edgekit matrix mobilenet_v3'")
    precisions = [check_precision(p) for p in cfg.precisions]
    targets, unavailable = resolve_targets(cfg.targets)
    if not targets:
        raise UsageError("no target can run on this machine", hint="run 'edgekit targets' to see why")
    models = resolve_models(cfg.models, console)
    bench = BenchSettings(threads=cfg.threads, batch=None, warmup=cfg.warmup, iters=cfg.iters,
                          seconds=cfg.seconds, device=cfg.device)
    plan = MatrixPlan(cfg, models, targets, precisions, unavailable, bench)
    cfg.out.mkdir(parents=True, exist_ok=True)
    rows, devices, extra = (executor or EmbeddedExecutor()).run(plan, console, quiet=quiet)
    report = new_report("matrix", rows, devices, {**cfg.settings(), "torch_baseline": "eager fp32, same run"})
    report.update(extra)
    for w in sorted({w for r in rows for w in r.get("warnings") or []}):
        console.warn(w)
    return report


class _Sink:
    """Swallows the pipeline's per-step lines (the matrix shows a progress bar instead);
    its warnings are kept in the Console's ``warnings`` list and reported once."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def exit_code(report: dict[str, Any]) -> int:
    """2 if a cell errored, 1 if a cell failed parity, else 0."""
    statuses = {r["status"] for r in report["rows"]}
    return 2 if "error" in statuses else 1 if "parity-fail" in statuses else 0
