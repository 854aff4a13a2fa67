"""What runs on the nodes. Plain functions: :mod:`.executor` submits them with ``ray.remote``.

Every task returns its result with a provenance record: which node ran it, on which
device, from when to when (``time.time()``), so the report can say where each cell
ran and a test can check that no two timings overlapped on one device. The cell logic
itself is :mod:`edgekit.matrix`'s, the same functions the embedded run uses.
"""
from __future__ import annotations

import functools
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..bench.run import error_text


def with_torch_threads(fn, threads: int):
    """``fn`` run with torch set to ``threads`` intra-op threads (the driver's count)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        import torch

        torch.set_num_threads(threads)
        return fn(*args, **kwargs)

    return run


def _here() -> dict[str, Any]:
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "start": time.time()}


def _done(prov: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**prov, **fields, "end": time.time()}


def probe(device: str, names: list[str]) -> dict[str, Any]:
    """A device node's fingerprint (labelled with its device name) and which of the targets
    ``names`` it can run."""
    from ..bench.device import fingerprint
    from ..errors import EdgekitError
    from ..targets import get_target

    prov = _here()
    targets = {}
    for t in map(get_target, names):
        try:
            ok, why = t.available()
        except EdgekitError as exc:
            ok, why = False, exc.message
        targets[t.name] = [bool(ok), str(why)]
    return {"fingerprint": fingerprint(device), "targets": targets, **_done(prov, kind="probe", device=device)}


def reference_pairs(cfg, model: str, target: str, precision: str, manifest):
    """(feed, torch reference output) pairs on the held-out samples, as ``export`` computes
    them for parity, plus the feeds' source: what a device checks the artifact against."""
    from ..matrix import _request
    from ..parity import reference_outputs
    from ..pipeline import parity_feeds, resolve
    from ..torch_runner import TorchRunner

    request = _request(cfg, model, target, precision, Path(manifest.final.path).parent)
    res = resolve(request)
    feeds = parity_feeds(res, request)
    reference = TorchRunner(res.model, res.inputs, manifest.stages[0].outputs)
    return reference_outputs(reference, feeds.heldout), feeds.heldout.source


def export_cell(cfg, model: str, target: str, precision: str, shape, dest: str, command: str,
                reused: tuple[bytes, str] | None = None):
    """Build one cell's artifact on this node (or take the driver's reusable one, its final
    stage packed): returns (meta, the whole artifact packed for the driver or None, its
    manifest + final stage packed for the devices or None, reference pairs or None).
    ``dest``: where the driver keeps it, written into the manifest so that a later run can
    reuse it."""
    from ..console import Console
    from ..matrix import Built, _Sink, build_cell, cell_base
    from .transport import pack, unpack

    prov = _here()
    meta: dict[str, Any] = {"row": None, "warnings": [], "reused": reused is not None}
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        try:
            if reused is not None:
                folder = Path(tmp) / Path(dest).name
                folder.mkdir()
                built = Built(folder, unpack(reused[0], reused[1], folder, final_only=True), reused=True)
            else:
                local = replace(cfg, out=Path(tmp), reuse=False)
                built = build_cell(local, model, target, precision, cell_base(local, model, target, precision, "",
                                                                              shape),
                                   None, None, Console(quiet=True, err=_Sink()))
                if isinstance(built, dict):
                    meta["row"] = built
                    return _finish(meta, prov, model, target, precision), None, None, None
                built.manifest.request["out"] = dest
                built.manifest.command = command
                built.manifest.write(built.folder)
            pairs, source = reference_pairs(cfg, model, target, precision, built.manifest)
            meta["fidelity_outputs"] = shared_outputs(built.manifest, pairs, cfg.threads)
            whole = None if reused is not None else pack(built.folder)[0]
            final, sha = pack(built.folder, final_only=True)
        except Exception as exc:  # the cell's content is its error; the run goes on
            from ..bench.run import target_versions
            from ..report.schema import make_row

            meta["row"] = make_row(model=model, target=target, precision=precision, device_id="",
                                   versions=target_versions(target), threads=cfg.threads, device=cfg.device,
                                   input_shape=shape, status="error", error=error_text(exc))
            return _finish(meta, prov, model, target, precision), None, None, None
    meta.update(manifest_sha256=sha, warnings=built.warnings, source=source)
    return _finish(meta, prov, model, target, precision), whole, final, pairs


def shared_outputs(manifest, pairs, threads: int | None) -> list | None:
    """The shared Q/DQ (or FP16) graph's outputs on the reference feeds, run by ONNX Runtime on the
    export node: the reference of the final stage's runtime fidelity on each device (issue 19: gated
    for any weights). None where the final stage is FP32 or the shared graph itself, or where the
    shared graph's file is not here (a reused cell ships its final stage only)."""
    from ..parity import shared_graph
    from ..targets import get_target

    final, shared = manifest.final, shared_graph(manifest.stages)
    if shared is None or final.precision == "fp32" or final.stage == shared.stage or not Path(shared.path).is_file():
        return None
    with get_target("onnx").open(shared, threads=threads) as runner:
        return [runner.infer(feed) for feed, _ in pairs]


def _finish(meta, prov, model, target, precision):
    meta["prov"] = _done(prov, kind="export", cell=f"{model}/{target}/{precision}",
                         status=(meta["row"] or {}).get("status", "ok"))
    return meta


def device_parity(manifest, pairs, source: str, threads: int | None, device: str | None,
                  fidelity_outputs: list | None = None) -> dict[str, Any]:
    """The final stage on this node against the shipped reference outputs, judged by the
    tolerance the export judged it by; with ``fidelity_outputs`` (:func:`shared_outputs`) also
    against the shared graph, with the floor a local export applies (its runtime fidelity, which
    differs between CPUs: x86 without VNNI saturates OpenVINO's INT8 sums). Summarised with the
    export's verdicts on the earlier stages, as a local export's row is."""
    from ..compare import Comparison, Tolerance
    from ..parity import add_fidelity, compare_stage, shared_graph
    from ..report.schema import parity_summary
    from ..targets import get_target

    final = manifest.final
    export_side = {c["stage"]: c for c in manifest.parity}
    if final.stage not in export_side:
        raise ValueError(f"the manifest has no parity entry for stage '{final.stage}'")
    tol = Tolerance(**export_side[final.stage]["tolerance"])
    runner = get_target(final.target).open(final, device=device, threads=threads)
    outs: list | None = [] if fidelity_outputs is not None else None
    comp = compare_stage(final, runner, pairs, tol, source, outs)
    if fidelity_outputs is not None:
        shared = shared_graph(manifest.stages)
        ref = Comparison(stage=shared.stage, runner="onnxruntime", precision=shared.precision, tolerance=Tolerance(),
                         inputs_source=source)
        for (_, expected), out in zip(pairs, fidelity_outputs):
            ref.add(expected, out)
        add_fidelity([ref, comp], [shared, final], [fidelity_outputs, outs], shared)
    parity = [c for c in manifest.parity if c["stage"] != final.stage] + [comp.to_dict()]
    return parity_summary(parity, final.stage, manifest.reports.get("reference_stability"))


def device_cell(device: str, cfg, bench, model_name: str, target: str, precision: str, shape, dest: str,
                meta: dict[str, Any], data: bytes | None, pairs):
    """Parity and latency of one artifact on this device node: (row, provenance)."""
    from ..bench.device import fingerprint
    from ..matrix import Built, cell_base, measure_cell
    from ..report.schema import make_row
    from ..targets import get_target
    from .transport import unpack

    prov = _here()
    dev = fingerprint(device)["device_id"]
    if meta["row"] is not None:
        row = {**meta["row"], "device_id": dev, "model": model_name}
    else:
        base = cell_base(cfg, model_name, target, precision, dev, shape)
        with tempfile.TemporaryDirectory(prefix="edgekit-device-") as tmp:
            try:
                manifest = unpack(data, meta["manifest_sha256"], Path(tmp), final_only=True)
                ok, why = get_target(manifest.final.target).available()
                if not ok:
                    row = make_row(**base, status="skipped",
                                   error=f"{manifest.final.target} unavailable on device {device}: {why}")
                else:
                    parity = device_parity(manifest, pairs, meta.get("source", ""), cfg.threads, cfg.device,
                                           meta.get("fidelity_outputs"))
                    row = measure_cell(Built(Path(tmp), manifest, meta["reused"], meta["warnings"]), bench, dev,
                                       shape, parity=parity)
                    row["model"] = model_name
                    row["artifact"] = dest
            except Exception as exc:
                row = make_row(**base, status="error", error=f"on device {device}: {error_text(exc)}")
    return row, _done(prov, kind="device", device=device, cell=f"{model_name}/{target}/{precision}",
                      status=row["status"])


def baseline(device: str, cfg, bench, model: str):
    """Torch eager FP32 on this device: the baseline row, (row, provenance)."""
    from ..bench.device import fingerprint
    from ..bench.run import bench_torch, torch_reference
    from ..matrix import baseline_error_row

    prov = _here()
    dev = fingerprint(device)["device_id"]
    try:
        ref = torch_reference(model, cfg.input_shape, cfg.batch, pretrained=cfg.pretrained)
        row = bench_torch(model, bench, dev, reference=ref)
    except Exception as exc:
        row = baseline_error_row(model, dev, exc, list(cfg.input_shape) if cfg.input_shape else None)
    return row, _done(prov, kind="baseline", device=device, cell=f"{row['model']}/torch/fp32", status=row["status"])


def pairs(device: str, plan, model: str, rows: list[dict[str, Any]], artifacts: dict[str, tuple],
          paired_seconds: float):
    """The interleaved pairs of one model's rows on this device: (rows, provenance).
    ``artifacts``: driver path → (ObjectRef of the packed bytes, manifest sha256)."""
    import ray

    from ..bench import run as bench_run
    from ..bench.run import torch_reference
    from ..matrix import pair_rows
    from .transport import unpack

    prov = _here()
    bench_run.PAIRED_SECONDS = paired_seconds  # the driver's setting, as an embedded run would use it
    cfg = plan.cfg
    with tempfile.TemporaryDirectory(prefix="edgekit-pairs-") as tmp:
        local = {}
        for i, (dest, (data, sha)) in enumerate(artifacts.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            unpack(ray.get(data) if isinstance(data, ray.ObjectRef) else data, sha, folder, final_only=True)
            local[dest] = str(folder)
        for r in rows:
            r["artifact"] = local.get(r["artifact"], r["artifact"])
        back = {v: k for k, v in local.items()}
        try:
            ref = torch_reference(model, cfg.input_shape, cfg.batch, pretrained=cfg.pretrained)
            pair_rows(rows, {ref[0]: ref}, plan, lambda msg: None)
        finally:
            for r in rows:
                r["artifact"] = back.get(r["artifact"], r["artifact"])
    return rows, _done(prov, kind="pairs", device=device, cell=f"{model}/pairs", status="ok")
