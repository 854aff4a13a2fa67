"""Report rows from measurements: an artifact folder's final stage, or torch eager.

Both go through :func:`edgekit.bench.timing.measure` and the same Runner classes
parity uses (``get_target(stage.target).open(...)``; :class:`TorchRunner`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgekitError, UsageError, first_line
from ..report.schema import PARITY_ONLY, make_row, manifest_parity
from .device import runtime_versions
from .timing import measure, paired_ratio, synthetic_feed, time_runners


@dataclass
class BenchSettings:
    threads: int | None = None
    batch: int | None = None
    warmup: int = 10
    iters: int | None = None
    seconds: float = 2.0
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "batch": self.batch, "warmup": self.warmup, "iters": self.iters,
                "seconds": None if self.iters else self.seconds, "device": self.device}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_text(exc: BaseException) -> str:
    """One line for a report cell: the EdgekitError message + hint, or the exception's type and first
    line; terminal colour codes removed."""
    if isinstance(exc, EdgekitError):
        text = str(exc)
    else:
        first = first_line(exc, None, empty="")
        text = f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__
    return " ".join(_ANSI.sub("", text).split())


def target_versions(target: str) -> dict[str, str]:
    """Installed versions of what runs ``target`` (its exporter's packages)."""
    if target == "torch":
        return runtime_versions(("torch",))
    try:
        from ..targets import get_target

        packages = tuple(get_target(target).packages)
    except EdgekitError:
        packages = ()
    return runtime_versions(packages or (target,))


def options_are_default(target: str, options: dict[str, Any] | None) -> bool:
    """True when every target option in the request equals its documented default."""
    if not options:
        return True
    try:
        from ..targets import get_target

        defaults = {o.dest: o.default for o in get_target(target).options}
    except EdgekitError:
        return False
    return all(v is None or defaults.get(k, object()) == v for k, v in options.items())


def _shape_for(inputs, batch: int | None) -> list[int]:
    shape = list(inputs[0].shape) if inputs else []
    if shape and batch:
        shape[0] = batch
    return shape


def _check_batch(inputs, batch: int | None, what: str) -> None:
    if batch is None or not inputs:
        return
    spec = inputs[0]
    if not spec.dynamic_batch and spec.shape[0] != batch:
        raise UsageError(f"{what} was exported with batch {spec.shape[0]}; cannot run batch {batch}",
                         hint="re-export with --batch N or --dynamic-batch")


def read_artifact(folder: str | Path):
    """The manifest of an artifact folder (or its artifact.json)."""
    from ..artifact import Manifest

    return Manifest.read(Path(folder))


def artifact_row_fields(manifest, folder: Path) -> dict[str, Any]:
    """Everything a row says about an artifact without running it."""
    final = manifest.final
    req = manifest.request or {}
    target = req.get("target") or final.target
    return {"model": manifest.model.get("name") or req.get("model", "?"), "target": target,
            "precision": req.get("precision") or final.precision, "stage": final.stage, "format": final.format,
            "artifact": str(Path(folder).resolve()),
            "size_mb": round(final.size_bytes / 1e6, 3) if final.path.exists() else None,
            "options": dict(req.get("options") or {}),
            "default_options": options_are_default(target, req.get("options")),
            "parity": manifest_parity(manifest)}


def bench_artifact(folder: str | Path, settings: BenchSettings, device_id: str, manifest=None) -> dict[str, Any]:
    """Measure the final stage of an artifact folder; a row (status error with the message on failure)."""
    from ..targets import get_target

    manifest = manifest or read_artifact(folder)
    final = manifest.final
    fields = artifact_row_fields(manifest, Path(folder))
    row = make_row(**fields, device_id=device_id, versions=target_versions(fields["target"]),
                   input_shape=_shape_for(final.inputs, settings.batch), batch=settings.batch or
                   (final.inputs[0].shape[0] if final.inputs else 1), threads=settings.threads,
                   device=settings.device)
    try:
        final.verify()
        _check_batch(final.inputs, settings.batch, f"{fields['model']} ({fields['target']})")
        runner = get_target(final.target).open(final, device=settings.device, threads=settings.threads)
        feed = synthetic_feed(final.inputs, settings.batch) if final.inputs else None
        stats = measure(runner, feed, warmup=settings.warmup, iters=settings.iters, seconds=settings.seconds,
                        batch=settings.batch)
    except Exception as exc:  # one artifact that cannot run must not stop the others
        row.update(status="error", error=error_text(exc))
        return row
    row.update(latency=stats.to_dict(), runner=stats.runner)
    if getattr(runner, "parity_only", False):
        row["flags"].append(PARITY_ONLY)
        row["notes"].append(f"{stats.runner} is a reference interpreter for parity: its time is not a device latency")
    par = row["parity"]
    row["status"] = "parity-fail" if par and not par["all_passed"] else "ok"
    return row


def torch_reference(model: str, input_shape: tuple[int, ...] | None = None, batch: int = 1,
                    weights: Path | None = None, pretrained: bool = False):
    """(model name, nn.Module, inputs) resolved exactly as ``edgekit export`` resolves them."""
    from ..contracts import ExportRequest
    from ..pipeline import resolve

    res = resolve(ExportRequest(model=model, input_shape=input_shape, batch=batch, weights=weights,
                                pretrained=pretrained))
    return res.spec.name, res.model, res.inputs


def bench_torch(model: str, settings: BenchSettings, device_id: str, input_shape: tuple[int, ...] | None = None,
                weights: Path | None = None, pretrained: bool = False, reference=None) -> dict[str, Any]:
    """Torch eager FP32 on the CPU: the baseline every speed-up is relative to.

    ``reference``: an already built ``(name, module, inputs)`` (from :func:`torch_reference`)."""
    from ..torch_runner import TorchRunner

    name, module, inputs = reference or torch_reference(model, input_shape, settings.batch or 1, weights, pretrained)
    if settings.batch:
        inputs = tuple(i.with_batch(settings.batch) for i in inputs)
    row = make_row(model=name, target="torch", precision="fp32", device_id=device_id,
                   versions=target_versions("torch"), baseline=True, stage="torch", format="pytorch",
                   runner="torch", input_shape=list(inputs[0].shape), batch=inputs[0].shape[0],
                   threads=settings.threads, notes=["torch eager FP32 baseline"])
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    row["size_mb"] = round(params / 1e6, 3)
    stats = measure(TorchRunner(module, inputs, threads=settings.threads), synthetic_feed(inputs),
                    warmup=settings.warmup, iters=settings.iters, seconds=settings.seconds)
    row.update(latency=stats.to_dict(), runner=stats.runner)
    return row


PAIRED_SECONDS = 2.0


def pair_int8_with_fp32(rows: list[dict[str, Any]], settings: BenchSettings, log=None) -> int:
    """Time each INT8 row against its FP32 sibling (same model, target, device, shape,
    threads) in interleaved rounds, and record the result in the INT8 row's ``paired``.

    Each row's own latency is measured alone, minutes apart from its sibling's; on a
    machine whose load drifts that comparison can point either way. Interleaving puts the
    same load on both, so the INT8-vs-FP32 check (:func:`edgekit.report.finalize`) uses
    this pair when it is there. Returns the number of pairs timed."""
    def key(r):
        return (r["model"], r["target"], r["device_id"], tuple(r.get("input_shape") or ()), r.get("threads"),
                r.get("device"))

    ok = [r for r in rows if _device_timed(r)]
    fp32 = {key(r): r for r in ok if r["precision"] == "fp32"}
    done = 0
    for r in ok:
        sibling = fp32.get(key(r))
        if r["precision"] != "int8" or sibling is None:
            continue

        def setup(sibling=sibling, r=r):
            finals = [read_artifact(x["artifact"]).final for x in (sibling, r)]
            return ({"fp32": _opener(finals[0], settings), "int8": _opener(finals[1], settings)},
                    synthetic_feed(finals[0].inputs, settings.batch))

        t = _pair(r, "paired", setup, "INT8-vs-FP32")
        if t is None:
            continue
        ratio = paired_ratio(t, "int8", "fp32")
        r["paired"].update(fp32_p50_ms=t["fp32"]["p50_ms"], int8_p50_ms=t["int8"]["p50_ms"], ratio=ratio["ratio"],
                           rounds=ratio["rounds"], rounds_int8_faster=ratio["rounds_faster"])
        done += 1
        if log:
            log(f"{r['model']} {r['target']}: INT8/FP32 {r['paired']['ratio']:.2f}x (interleaved)")
    return done


def pair_with_baseline(rows: list[dict[str, Any]], references: dict[str, tuple], settings: BenchSettings,
                       log=None) -> int:
    """Time each artifact row against torch eager FP32 of the same model in interleaved rounds
    and record it in the row's ``paired_baseline`` (the speed-up then comes from this pair,
    not from two measurements taken minutes apart). ``references``: model name →
    ``(name, module, inputs)`` from :func:`torch_reference`. Returns the number of pairs."""
    from ..torch_runner import TorchRunner

    done = 0
    for r in rows:
        ref = references.get(r["model"])
        if ref is None or not _device_timed(r):
            continue
        _, module, inputs = ref
        if settings.batch:
            inputs = tuple(i.with_batch(settings.batch) for i in inputs)
        if list(inputs[0].shape) != list(r.get("input_shape") or []):
            continue

        def setup(r=r, module=module, inputs=inputs):
            final = read_artifact(r["artifact"]).final
            return ({"torch": lambda: TorchRunner(module, inputs, threads=settings.threads),
                     "artifact": _opener(final, settings)}, synthetic_feed(inputs))

        t = _pair(r, "paired_baseline", setup, "torch-eager")
        if t is None:
            continue
        ratio = paired_ratio(t, "torch", "artifact")
        r["paired_baseline"].update(torch_p50_ms=t["torch"]["p50_ms"], p50_ms=t["artifact"]["p50_ms"],
                                    speedup=ratio["ratio"], rounds=ratio["rounds"])
        done += 1
        if log:
            log(f"{r['model']} {r['target']} {r['precision']}: {r['paired_baseline']['speedup']:.2f}x torch eager "
                "(interleaved)")
    return done


def _device_timed(row: dict[str, Any]) -> bool:
    """An artifact row measured on a device runtime (not the baseline, not failed, not a
    reference interpreter): the rows worth an interleaved pair."""
    return (not row.get("baseline") and row.get("status") in ("ok", "parity-fail") and bool(row.get("artifact"))
            and PARITY_ONLY not in (row.get("flags") or []))


def _pair(row: dict[str, Any], field: str, setup, what: str) -> dict[str, dict[str, float]] | None:
    """Run ``setup()`` → (runner openers, feed), time them interleaved and start ``row[field]``
    with the method; on failure add a warning to the row and return None (the pair is extra
    evidence: its failure must not lose the row)."""
    try:
        openers, feed = setup()
        t = _interleaved(openers, feed)
    except Exception as exc:
        row.setdefault("warnings", []).append(f"interleaved {what} timing failed: {error_text(exc)}")
        return None
    row[field] = {"seconds_each": PAIRED_SECONDS,
                  "method": "interleaved rounds, one synthetic feed; ratio: median of the per-round p50 ratios"}
    return t


def _opener(final, settings: BenchSettings):
    from ..targets import get_target

    return lambda: get_target(final.target).open(final, device=settings.device, threads=settings.threads)


def _interleaved(openers: dict[str, Any], feed) -> dict[str, dict[str, float]]:
    """Open every runner, time them in interleaved rounds (PAIRED_SECONDS each), close them."""
    import contextlib

    with contextlib.ExitStack() as stack:
        runners = {k: stack.enter_context(make()) for k, make in openers.items()}
        return time_runners(runners, feed, seconds=len(runners) * PAIRED_SECONDS)
