"""Benchmark the focus models on this machine: every available target and precision,
torch eager FP32 measured in the same run as the baseline.

    .venv/bin/python bench/matrix.py --out bench/results/matrix.json
    .venv/bin/python bench/matrix.py --models mobilenet_v3_small --targets onnx --precisions fp32 --seconds 0.5

Writes the report JSON (schema edgekit.report/1) plus .md and .html beside it, and
prints the table. Artifacts go to <out folder>/artifacts and are reused on the next run
when nothing changed. Timings are only as good as the machine is quiet: each row
records the load average, and the report flags rows measured on a busy machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FOCUS = ("mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0")


def main(argv: list[str] | None = None) -> int:
    from edgekit.console import Console
    from edgekit.errors import EdgekitError
    from edgekit.matrix import MatrixConfig, exit_code, run_matrix
    from edgekit.report import write_outputs
    from edgekit.report.table import main_table, text_table
    from edgekit.specs import parse_shape

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/matrix.json"), help="report JSON path")
    ap.add_argument("--models", nargs="+", default=list(FOCUS))
    ap.add_argument("--targets", default="all", help="comma-separated, or 'all' available here (default)")
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--input-shape", type=parse_shape)
    ap.add_argument("--calib", type=Path)
    ap.add_argument("--no-reuse", dest="reuse", action="store_false")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    out_json = args.out if args.out.suffix == ".json" else args.out / "matrix.json"
    console = Console(quiet=args.quiet)
    cfg = MatrixConfig(models=args.models, targets=args.targets.split(","), precisions=args.precisions.split(","),
                       out=out_json.parent, threads=args.threads, warmup=args.warmup, seconds=args.seconds,
                       input_shape=args.input_shape, calib=args.calib, reuse=args.reuse)
    try:
        report = run_matrix(cfg, console, quiet=args.quiet)
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    console.print(text_table(*main_table(report, notes_limit=100)))
    for c in report["checks"]:
        console.warn(c["message"])
    for p in write_outputs(report, out_json, out_json.with_suffix(".md"), out_json.with_suffix(".html")):
        console.info(f"wrote {p}")
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
