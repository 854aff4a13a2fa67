"""``edgekit bench ARTIFACT...``: latency of each artifact's final stage on this device."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.specs import float_option, int_option

MAX_THREADS = 1024
MAX_BATCH = 4096


def add_timing_args(p: argparse.ArgumentParser, seconds: float = 2.0, warmup: int = 10) -> None:
    p.add_argument("--threads", type=int_option("--threads", 1, MAX_THREADS),
                   help="runtime threads (default: each runtime's own default)")
    p.add_argument("--warmup", type=int_option("--warmup", 0, 1_000_000), default=warmup,
                   help=f"warm-up runs, the first included (default {warmup})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int_option("--iters", 1, 100_000_000),
                        help="timed runs (default: run for --seconds)")
    budget.add_argument("--seconds", type=float_option("--seconds", 0.0, 86_400.0, lo_open=True), default=seconds,
                        help=f"time budget of the timed runs (default {seconds:g})")
    p.add_argument("--device", help="runtime device passed to the target's runner (e.g. GPU for OpenVINO)")
    p.add_argument("--label", help="name of this device in reports (default: CPU, threads, OS)")


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure the latency of exported artifacts on this device",
        description="Open each artifact folder's final stage with its target's runner, warm up, time the "
                    "inference calls and write a report (JSON is the source of truth; Markdown and HTML are "
                    "views). The method is in docs/bench.md. Exit 0, or 2 if an artifact could not run.")
    p.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT", help="artifact folder from 'edgekit export'")
    p.add_argument("--batch", type=int_option("--batch", 1, MAX_BATCH),
                   help="batch size (needs a dynamic-batch artifact unless it matches)")
    add_timing_args(p)
    p.add_argument("--torch", action="append", default=[], metavar="MODEL",
                   help="add a torch eager FP32 baseline row for MODEL (repeatable)")
    p.add_argument("--json", type=Path, help="write the report JSON here")
    p.add_argument("--md", type=Path, help="write a Markdown report here")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report with plots here")
    p.set_defaults(func=run)


def print_report(report, console) -> None:
    from edgekit.report.table import main_table, text_table

    console.print(text_table(*main_table(report, notes_limit=100)))
    for c in report.get("checks") or []:
        console.warn(c["message"])


def run(args: argparse.Namespace) -> int:
    from edgekit.bench.device import fingerprint
    from edgekit.bench.run import BenchSettings, bench_artifact, bench_torch, pair_int8_with_fp32, read_artifact
    from edgekit.console import Console
    from edgekit.errors import UsageError
    from edgekit.report import new_report, write_outputs

    console = Console(quiet=getattr(args, "quiet", False))
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    manifests = [(a, read_artifact(a)) for a in args.artifacts]  # every path is checked before any timing
    if args.device is not None:  # honoured by every artifact's runtime, or refused before any timing
        from edgekit.targets import get_target

        for _, m in manifests:
            get_target(m.final.target).check_device(args.device)
    settings = BenchSettings(threads=args.threads, batch=args.batch, warmup=args.warmup, iters=args.iters,
                             seconds=args.seconds, device=args.device)
    fp = fingerprint(args.label)
    dev = fp["device_id"]
    rows = []
    for model in args.torch:
        shape = next((list(m.final.inputs[0].shape) for _, m in manifests if m.final.inputs and model in
                      (m.model.get("name"), m.model.get("user_ref"), m.model.get("alias"), m.request.get("model"))),
                     None)
        with console.step(f"torch eager {model}") as d:
            rows.append(bench_torch(model, settings, dev, input_shape=tuple(shape) if shape else None))
            d["summary"] = f"p50 {rows[-1]['latency']['p50_ms']:.3g} ms"
    for path, manifest in manifests:
        with console.step(f"bench {path}") as d:
            rows.append(bench_artifact(path, settings, dev, manifest=manifest))
            lat = rows[-1].get("latency")
            d["summary"] = f"p50 {lat['p50_ms']:.3g} ms" if lat else rows[-1].get("error")
    if any(r["precision"] == "int8" for r in rows) and any(r["precision"] == "fp32" for r in rows):
        with console.step("INT8 against FP32 siblings, interleaved") as d:
            d["summary"] = f"{pair_int8_with_fp32(rows, settings, log=console.info)} pair(s)"
    report = new_report("bench", rows, {dev: fp}, settings.to_dict())
    print_report(report, console)
    for p in write_outputs(report, args.json, args.md, args.html):
        console.info(f"wrote {p}")
    return 2 if any(r["status"] == "error" for r in rows) else 0
