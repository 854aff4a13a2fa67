"""Mobile targets (ExecuTorch XNNPACK, ncnn): latency FP32 vs INT8/FP16, the focus-model
parity matrix, and the pretrained EfficientNet-Lite0 INT8 top-1 agreement. Writes one JSON.

    .venv/bin/python bench/mobile.py latency --models mobilenet_v3_large --threads 2
    .venv/bin/python bench/mobile.py parity --res 96            # every focus model, both targets
    .venv/bin/python bench/mobile.py lite0 --heldout 200 --calib 256

``latency`` exports with ``edgekit.pipeline.export`` (the code path of ``edgekit export``;
its own parity and latency steps off), opens the runners side by side and times them with
``edgekit.bench.timing.measure`` in interleaved rounds, so load from other processes falls on
every runner alike. ``parity`` exports each focus model (deterministic weights, ``--res``²
input) with the target's exporter and compares it with PyTorch on held-out photo crops.
``lite0`` exports the pretrained Lite0 to ExecuTorch INT8 (calibrated on ``--calib`` photo
crops) and reports the gate: top-1/top-5 agreement and cosine vs FP32 PyTorch on
``--heldout`` held-out crops.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source tree
    sys.path.insert(0, str(ROOT))

SCHEMA = "edgekit.bench.mobile/1"
TARGETS = ("executorch", "ncnn")


def focus_models() -> list[str]:
    from edgekit.models import list_specs

    return [s.name for s in list_specs() if s.focus]


def _pipeline_export(model: str, target: str, precision: str, args, work: Path, console):
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import export as run_export

    req = ExportRequest(model=model, target=target, precision=precision, out=work / f"{model}-{target}-{precision}",
                        threads=args.threads, parity=False, bench=False,
                        input_shape=(1, 3, args.input_size, args.input_size) if args.input_size else None)
    t0 = time.perf_counter()
    res = run_export(req, console)
    return res.manifest.final, time.perf_counter() - t0


def latency(args, work: Path, console) -> list[dict]:
    import torch

    from edgekit.bench.timing import paired_ratio, synthetic_feed, time_runners
    from edgekit.targets import get_target

    rows = []
    for model in args.models or ["mobilenet_v3_large"]:
        row: dict = {"model": model, "exports": {}}
        arts = {}
        for target, precision in (("executorch", "fp32"), ("executorch", "int8"), ("ncnn", "fp32"),
                                  ("ncnn", "fp16")):
            if target not in args.targets:
                continue
            art, secs = _pipeline_export(model, target, precision, args, work, console)
            arts[f"{target}_{precision}"] = art
            row["exports"][f"{target}_{precision}"] = {"seconds": round(secs, 1),
                                                       "size_mb": round(art.size_bytes / 1e6, 2),
                                                       "gate": art.meta.get("gate")}
        feed = synthetic_feed(next(iter(arts.values())).inputs)
        with contextlib.ExitStack() as stack, torch.inference_mode():
            runners = {k: stack.enter_context(get_target(a.target).open(a, threads=args.threads))
                       for k, a in arts.items()}
            lat = time_runners(runners, feed, seconds=args.seconds * len(runners), warmup=args.warmup,
                               rounds=args.rounds)
        row["latency"] = lat
        row["input_shape"] = list(next(iter(arts.values())).inputs[0].shape)
        if "executorch_fp32" in lat and "executorch_int8" in lat:
            row["int8_speedup_vs_fp32"] = paired_ratio(lat, "executorch_fp32", "executorch_int8")["ratio"]
        console.info(f"{model}: " + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in lat.items()))
        rows.append(row)
    return rows


def _context(name: str, target: str, precision: str, res: int | None, heldout: int, calib: int,
             pretrained: bool = False, options: dict | None = None):
    from edgekit.feeds import photo_feeds
    from edgekit.contracts import ExportContext, ExportRequest
    from edgekit.models.build import build
    from edgekit.models.registry import get_spec

    spec = get_spec(name)
    model, weights = build(spec, pretrained=pretrained)
    inp = spec.input if res is None else replace(spec.input, shape=(1, spec.input.shape[1], res, res))
    feeds = photo_feeds(spec.preprocess, inp, heldout=heldout, calib=calib)
    req = ExportRequest(model=name, target=target, precision=precision, pretrained=pretrained, threads=1,
                        options=dict(options or {}))
    return ExportContext(request=req, spec=spec, model=model.eval(), inputs=(inp,), source=None,
                         calib_feeds=feeds.calib, heldout_feeds=feeds.heldout, log=lambda m: None,
                         warn=lambda m: None, stem=name)


def compare(ctx, art):
    """The exported artifact vs the PyTorch model on the held-out feeds, with the pipeline's tolerance."""
    from edgekit.compare import Comparison, tolerance_for
    from edgekit.targets import get_target
    from edgekit.torch_runner import TorchRunner

    tol = tolerance_for(art.precision, {**ctx.spec.tolerance.get(art.precision, {}), **ctx.request.tolerance})
    if art.precision != "fp32" and not ctx.request.pretrained:
        tol = replace(tol, top1=None)  # ties between untrained classes are noise
    comp = Comparison(art.stage, "", art.precision, tol)
    with TorchRunner(ctx.model, ctx.inputs, art.outputs, threads=1) as ref, get_target(art.target).open(art, threads=1) as run:
        comp.runner = run.name
        for feed in ctx.heldout_feeds:
            comp.add(ref.infer(feed), run.infer(feed))
    return comp


def score(comp) -> dict:
    p = comp.primary()
    return {"passed": comp.passed, "failures": comp.failures, "rows": p.rows or p.samples,
            "max_abs": float(p.max_abs), "rel_max_abs": float(p.max_abs / max(p.ref_peak, 1e-12)),
            "cosine": round(float(p.cosine), 7), "sqnr_db": round(float(p.sqnr_db), 2) if np.isfinite(p.sqnr_db) else None,
            "top1": p.top1, "top5": p.top5}


def parity(args, work: Path, console) -> list[dict]:
    from edgekit.targets import get_target

    rows = []
    for name in args.models or focus_models():
        for target in args.targets:
            t = get_target(target)
            for precision in t.precisions:
                row = {"model": name, "target": target, "precision": precision, "res": args.res}
                t0 = time.perf_counter()
                try:
                    ctx = _context(name, target, precision, args.res, args.heldout, args.calib)
                    art = t.export(ctx, work / f"{name}-{target}-{precision}")
                    row["export_seconds"] = round(time.perf_counter() - t0, 1)
                    row.update(score(compare(ctx, art)))
                    if "quantization" in art.meta:
                        row["float_layers"] = len(art.meta["quantization"].get("float_layers", []))
                except Exception as exc:  # one failure is a row, not the end of the run
                    row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                console.info(json.dumps(row, default=str))
                rows.append(row)
                args.out.write_text(json.dumps({"schema": SCHEMA, "mode": "parity", "rows": rows}, indent=1,
                                               default=str))
    return rows


def lite0(args, work: Path, console) -> list[dict]:
    from edgekit.targets import get_target

    opts = {} if args.max_float is None else {"et_max_float": args.max_float}
    opts["et_calib_samples"] = args.calib
    ctx = _context("efficientnet_lite0", "executorch", "int8", None, args.heldout, args.calib, pretrained=True,
                   options=opts)
    ctx.log = console.info
    t0 = time.perf_counter()
    art = get_target("executorch").export(ctx, work / "lite0")
    row = {"model": "efficientnet_lite0", "pretrained": True, "export_seconds": round(time.perf_counter() - t0, 1),
           "calib": args.calib, "heldout": args.heldout, "gate": art.meta.get("gate"),
           "quantization": art.meta.get("quantization")}
    console.info(json.dumps(row["gate"], default=str))
    return [row]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("latency", "parity", "lite0"))
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="latency: timed seconds per runner (pooled)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--input-size", type=int, default=None, help="latency: square input side (default: the model's)")
    p.add_argument("--res", type=int, default=96, help="parity: square input side")
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--max-float", type=int, default=None, help="lite0: --et-max-float (default: the exporter's)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.out = args.out or ROOT / "bench" / "results" / f"mobile-{args.mode}.json"

    from edgekit.bench.device import fingerprint
    from edgekit.console import Console

    console = Console(quiet=args.quiet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-mobile-bench-") as tmp:
        rows = {"latency": latency, "parity": parity, "lite0": lite0}[args.mode](args, Path(tmp), console)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"schema": SCHEMA, "mode": args.mode, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "device": fingerprint(), "settings": settings, "seconds": round(time.perf_counter() - t0, 1),
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=2, default=str))
    console.print(str(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
