"""``edgekit ci``: the parity gate of a project, from ``edgekit.toml``, as JUnit XML.

The project file names the models, targets, precisions, tolerances and calibration
data (format in docs/ci.md; example in docs/edgekit.example.toml). Every (model,
target, precision) is exported with ``edgekit.pipeline.export`` and becomes one JUnit
``testcase``: a parity failure is a ``failure`` whose message names the model, the
target, the stage and the metric; an export error is an ``error``. Exit codes: 0 all
passed, 1 a parity failure, 2 a configuration or export error.
"""
from __future__ import annotations

import difflib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cells import Cell, cell_folder, cell_request, export_cell
from .errors import ConfigError, EdgekitError, UsageError
from .feeds import is_array_file
from .specs import PRECISIONS, parse_shape

TOLERANCE_KEYS = ("max_abs", "cosine", "sqnr_db", "top1")
TOP_KEYS = {"models": list, "targets": list, "precisions": list, "calib": str, "out": str, "input_shape": str,
            "batch": int, "samples": int, "pretrained": bool, "threads": int, "bench": bool, "seconds": float,
            "skip_unavailable": bool, "tolerance": dict, "model": dict, "options": dict}
MODEL_KEYS = {"targets": list, "precisions": list, "calib": str, "input_shape": str, "batch": int,
              "samples": int, "weights": str, "pretrained": bool, "tolerance": dict, "options": dict}


@dataclass
class CiConfig:
    path: Path
    cells: list[Cell]
    out: Path
    threads: int | None = None
    bench: bool = False
    seconds: float = 1.0
    skip_unavailable: bool = False


def _toml():
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("reading edgekit.toml on Python 3.10 needs the package 'tomli'",
                              hint="pip install tomli, or use Python 3.11+") from None
    return tomllib


def _check_keys(table: dict[str, Any], allowed: dict[str, type], where: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"{where}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                              hint=f"allowed: {', '.join(allowed)}")
        typ = allowed[key]
        ok = isinstance(value, typ) or (typ is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (typ is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: '{key}' must be a {typ.__name__}, got {type(value).__name__}")
        if typ in (int, float) and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{where}: '{key}' must be a finite number above 0, got {value!r}",
                              hint="e.g. seconds = 1.0, threads = 2, samples = 32")


def _tolerances(table: dict[str, Any], where: str) -> dict[str, dict[str, float]]:
    """{precision: {metric: value}} from a [tolerance.<precision>] table."""
    out: dict[str, dict[str, float]] = {}
    for prec, metrics in table.items():
        if prec not in PRECISIONS:
            raise ConfigError(f"{where}: unknown precision '{prec}' in tolerance",
                              hint="use [tolerance.fp32], [tolerance.fp16] or [tolerance.int8]")
        if not isinstance(metrics, dict):
            raise ConfigError(f"{where}: tolerance.{prec} must be a table of metric = value")
        for k, v in metrics.items():
            if k not in TOLERANCE_KEYS:
                close = difflib.get_close_matches(k, TOLERANCE_KEYS, n=1)
                raise ConfigError(f"{where}: unknown metric '{k}' in tolerance.{prec}"
                                  + (f" (did you mean '{close[0]}'?)" if close else ""),
                                  hint=f"metrics: {', '.join(TOLERANCE_KEYS)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: tolerance.{prec}.{k} must be a number")
            if not math.isfinite(v):
                raise ConfigError(f"{where}: tolerance.{prec}.{k} must be a finite number, got {v!r}")
        out[prec] = {k: float(v) for k, v in metrics.items()}
    return out


def _target_options(table: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """{target: {option dest: value}} from an ``[options.<target>]`` table: the options ``edgekit export
    --target <target>`` takes (``edgekit targets``), by their long name with ``_`` or ``-``
    (``ov_int8_weights = "paired"`` is ``--ov-int8-weights paired``), checked as the command line checks them."""
    from .targets import get_target, resolve_target_name

    out: dict[str, dict[str, Any]] = {}
    for name, values in table.items():
        target = resolve_target_name(name)
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: options.{name} must be a table of option = value",
                              hint='e.g. [options.openvino] ov_int8_weights = "paired"')
        declared = {o.dest: o for o in get_target(target).options}
        for key, value in values.items():
            dest = key.lstrip("-").replace("-", "_")
            o = declared.get(dest)
            if o is None:
                close = difflib.get_close_matches(dest, declared, n=1)
                raise ConfigError(f"{where}: target '{target}' has no option '{key}'"
                                  + (f" (did you mean '{close[0]}'?)" if close else ""),
                                  hint=f"its options: {', '.join(declared) or 'none'} (edgekit export --help)")
            out.setdefault(target, {})[dest] = _option_value(o, value, f"{where}: options.{name}.{key}")
    return out


def _options_used(options: dict[str, dict[str, Any]], targets, where: str) -> None:
    """Options for a target nothing exports are a mistake (as an override of a model not in 'models' is)."""
    for target in options:
        if target not in targets:
            raise ConfigError(f"{where}: [options.{target}] is set, but no model is exported to '{target}'",
                              hint=f"targets: {', '.join(sorted(targets))}")


def _option_value(o, value: Any, where: str) -> Any:
    if o.action == "store_true":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    typ = o.type if o.type in (int, float) else str
    ok = isinstance(value, typ) and not isinstance(value, bool)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        kind = {int: "an integer", float: "a number", str: "a string"}[typ]
        raise ConfigError(f"{where} must be {kind}, got {type(value).__name__}")
    if o.choices is not None and value not in o.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, o.choices))}")
    return value


def _names(values: list[Any], what: str, where: str) -> list[str]:
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{where}: '{what}' must be a non-empty list of strings")
    return list(dict.fromkeys(values))


def _path(base: Path, value: str | None) -> Path | None:
    return None if value is None else (base / value).resolve()


def _shape(value: str | None, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return parse_shape(value)
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _user_ref(base: Path, ref: str) -> str:
    """``models/net.py:factory`` relative to the project file; module references unchanged."""
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return f"{(base / target).resolve()}:{attr}"
    return ref


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"project file not found: {path}",
                          hint="create edgekit.toml (see docs/edgekit.example.toml) or pass --config")
    try:
        data = _toml().loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # tomllib.TOMLDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("edgekit")
        if data is None:
            raise ConfigError(f"{path} has no [tool.edgekit] table")
    return data


def load_config(path: str | Path) -> CiConfig:
    """Parse and validate the project file; every problem is a ConfigError (exit 2)."""
    try:
        return _load_config(Path(path))
    except ConfigError:
        raise
    except EdgekitError as exc:  # unknown model / target names
        raise ConfigError(f"{Path(path).name}: {exc.message}", hint=exc.hint) from None


def _load_config(path: Path) -> CiConfig:
    from .models.registry import resolve_name
    from .models.user import is_user_ref
    from .targets import resolve_target_name

    data = read_config(path)
    where = path.name
    _check_keys(data, TOP_KEYS, where)
    base = path.resolve().parent
    overrides = data.get("model", {})
    models = _names(data.get("models") or list(overrides), "models", where)
    canon = {m: (m if is_user_ref(m) else resolve_name(m)[0]) for m in models}
    refs = {m: _user_ref(base, m) if is_user_ref(m) else canon[m] for m in models}
    targets = [resolve_target_name(t) for t in _names(data.get("targets", ["onnx"]), "targets", where)]
    precisions = _names(data.get("precisions", ["fp32"]), "precisions", where)
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"{where}: unknown precision '{p}'", hint=f"choose from {', '.join(PRECISIONS)}")
    global_tol = _tolerances(data.get("tolerance", {}), where)
    global_opts = _target_options(data.get("options", {}), where)
    for name in overrides:
        if name not in models:
            raise ConfigError(f"{where}: [model.\"{name}\"] overrides a model that is not in 'models'",
                              hint=f"models: {', '.join(models)}")
    cells = []
    for m in models:
        o = overrides.get(m, {})
        mw = f"{where} [model.{m}]"
        if not isinstance(o, dict):
            raise ConfigError(f"{mw} must be a table")
        _check_keys(o, MODEL_KEYS, mw)
        m_targets = [resolve_target_name(t) for t in _names(o["targets"], "targets", mw)] if "targets" in o \
            else targets
        m_precs = _names(o["precisions"], "precisions", mw) if "precisions" in o else precisions
        for p in m_precs:
            if p not in PRECISIONS:
                raise ConfigError(f"{mw}: unknown precision '{p}'", hint=f"choose from {', '.join(PRECISIONS)}")
        m_tol = _tolerances(o.get("tolerance", {}), mw)
        m_opts = _target_options(o.get("options", {}), mw)
        _options_used(m_opts, m_targets, mw)
        weights = _path(base, o.get("weights"))
        if weights is not None and not weights.is_file():
            raise ConfigError(f"{mw}: weights file not found: {weights}")
        calib = _path(base, o.get("calib", data.get("calib")))
        if calib is not None and not (calib.is_dir() or is_array_file(calib)):
            raise ConfigError(f"{mw if 'calib' in o else where}: calibration folder not found: {calib}")
        for t in m_targets:
            for p in m_precs:
                cells.append(Cell(model=canon[m], target=t, precision=p, ref=refs[m],
                                  input_shape=_shape(o.get("input_shape", data.get("input_shape")), mw),
                                  batch=o.get("batch", data.get("batch", 1)), calib=calib, weights=weights,
                                  pretrained=o.get("pretrained", data.get("pretrained", False)),
                                  samples=o.get("samples", data.get("samples")),
                                  tolerance={**global_tol.get(p, {}), **m_tol.get(p, {})},
                                  options={**global_opts.get(t, {}), **m_opts.get(t, {})}))
    _options_used(global_opts, {c.target for c in cells}, where)
    out = _path(base, data.get("out", "edgekit-ci"))
    return CiConfig(path=path, cells=cells, out=out, threads=data.get("threads"), bench=data.get("bench", False),
                    seconds=float(data.get("seconds", 1.0)), skip_unavailable=data.get("skip_unavailable", False))


def _request(cfg: CiConfig, cell: Cell):
    return cell_request(cell, cell_folder(cfg.out, cell.model, cell.target, cell.precision), threads=cfg.threads,
                        seconds=cfg.seconds)


def failure_message(cell: Cell, comparisons) -> str:
    """"mobilenet_v3_small onnx fp32: parity failed: stage 'onnx' (onnxruntime), output 'output':
    max_abs 6.5e-06 > 1e-12; ..." """
    parts = []
    for c in comparisons:
        for f in c.failures:
            if f.startswith("fidelity vs "):  # runtime fidelity (edgekit/verdict.py): names its reference
                parts.append(f"stage '{c.stage}' ({c.runner}) {f}")
                continue
            out, _, metric = f.partition(": ")
            parts.append(f"stage '{c.stage}' ({c.runner}), output '{out}': {metric}" if metric
                         else f"stage '{c.stage}' ({c.runner}): {f}")
    return f"{cell.model} {cell.target} {cell.precision}: parity failed: " + "; ".join(parts)


def run_ci_cell(cfg: CiConfig, cell: Cell, dev: str, console, debug: bool = False):
    """Export and check one cell: (JUnit case, report row). Never raises for the cell's own
    failures (unless ``debug``). The same function runs in this process and as a Ray task."""
    from .bench.run import BenchSettings, bench_artifact, target_versions
    from .parity import parity_table
    from .report.junit import Case
    from .report.schema import make_row, manifest_parity
    from .targets import get_target

    settings = BenchSettings(threads=cfg.threads, warmup=5, seconds=cfg.seconds)
    classname = f"edgekit.parity.{cell.target}"
    base = dict(model=cell.model, target=cell.target, precision=cell.precision, device_id=dev,
                versions=target_versions(cell.target), threads=cfg.threads,
                input_shape=list(cell.input_shape) if cell.input_shape else None)
    t0 = time.perf_counter()
    try:
        ok, why = get_target(cell.target).available()
    except EdgekitError as exc:
        ok, why = False, exc.message
    if not ok:
        msg = f"{cell.name}: target {cell.target} unavailable here: {why}"
        if cfg.skip_unavailable:
            return Case(cell.name, classname, skipped=msg), make_row(**base, status="skipped", error=msg)
        console.warn(msg)
        return Case(cell.name, classname, error=msg), make_row(**base, status="error", error=msg)
    result, error = export_cell(_request(cfg, cell), console, debug=debug)
    if result is None:
        msg = f"{cell.name}: export failed: {error}"
        console.warn(msg)
        return (Case(cell.name, classname, seconds=time.perf_counter() - t0, error=msg),
                make_row(**base, status="error", error=msg))
    table = parity_table(result.comparisons) if result.comparisons else "parity not run"
    final = result.manifest.final
    props = {"artifact": str(result.out), "final_stage": final.stage, "size_bytes": str(final.size_bytes)}
    stability = result.manifest.reports.get("reference_stability")
    par = manifest_parity(result.manifest)
    for k in ("max_abs", "cosine", "sqnr_db", "top1"):
        if par and par.get(k) is not None:
            props[f"{par['stage']}.{k}"] = str(par[k])
    if par and par.get("quantization"):  # the two references (edgekit/verdict.py)
        props["quantization"] = str(par["quantization"])
    if par and par.get("fidelity"):
        f = par["fidelity"]
        props.update({"fidelity.stage": str(f["stage"]), "fidelity.sqnr_db": str(f["sqnr_db"]),
                      "fidelity.floor_db": str(f["floor_db"]), "fidelity.passed": str(f["passed"]).lower()})
    if stability:  # the yardstick for top-1 figures (edgekit.stability)
        from .stability import describe

        props.update({f"reference_stability.{k}": str(stability[k]) for k in ("top1", "cosine", "sqnr_db")
                      if stability.get(k) is not None})
        table = f"{table}\nyardstick: {describe(stability)}"
    case = Case(cell.name, classname, seconds=time.perf_counter() - t0, properties=props, stdout=table)
    if not result.passed:
        case.failure = failure_message(cell, [c for c in result.comparisons if not c])
        case.details = f"{case.failure}\n\n{table}"
        console.warn(case.failure)
    row = bench_artifact(result.out, settings, dev, manifest=result.manifest) if cfg.bench else \
        make_row(**{**base, "input_shape": list(final.inputs[0].shape) if final.inputs else base["input_shape"]},
                 stage=final.stage, format=final.format, artifact=str(result.out),
                 size_mb=round(final.size_bytes / 1e6, 3), parity=par,
                 status="ok" if result.passed else "parity-fail")
    if row["status"] == "error":  # the artifact was built but could not be measured
        case.error = f"{cell.name}: bench failed: {row.get('error')}"
        console.warn(case.error)
    return case, row


def run_ci(cfg: CiConfig, console=None, junit: Path | None = None, debug: bool = False,
           executor=None) -> tuple[dict[str, Any], int]:
    """Run every cell; writes JUnit XML and the report into ``cfg.out``; returns (report, exit code).
    ``executor``: None runs the cells here, one after the other; ``edgekit.cluster.ci.RayCiExecutor``
    runs them as Ray tasks (same :func:`run_ci_cell`)."""
    from .bench.device import fingerprint
    from .console import Console
    from .report import write_outputs
    from .report.junit import write_junit
    from .report.schema import new_report

    console = console or Console()
    if executor is not None:
        cases, rows, devices, extra = executor.run(cfg, console, debug)
    else:
        fp = fingerprint()
        devices, extra, cases, rows = {fp["device_id"]: fp}, {}, [], []
        for i, cell in enumerate(cfg.cells, 1):
            console.info(f"[{i}/{len(cfg.cells)}] {cell.name}")
            case, row = run_ci_cell(cfg, cell, fp["device_id"], console, debug)
            cases.append(case)
            rows.append(row)
    for case, row in zip(cases, rows):  # one of each per cell: every error row is a JUnit error
        if row["status"] == "error" and case.error is None:
            case.error = row.get("error") or f"{case.name}: error"
    junit = junit or cfg.out / "junit.xml"
    write_junit(cases, junit, suite=f"edgekit ci ({cfg.path.name})")
    report = new_report("ci", rows, devices, {"config": str(cfg.path), "bench": cfg.bench,
                                              "threads": cfg.threads})
    report.update(extra)
    written = write_outputs(report, cfg.out / "report.json", cfg.out / "report.md", None)
    console.info(f"wrote {junit}, {', '.join(str(p) for p in written)}")
    code = 2 if any(c.error for c in cases) else 1 if any(c.failure for c in cases) else 0
    return report, code
