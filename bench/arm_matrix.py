"""The full emulated-ARM matrix: every focus model × target × precision × emulated core, x86 vs
aarch64 fidelity and aarch64 vs PyTorch. Needs 'edgekit arm setup' (with --runtime for the
non-ONNX targets). Emulation is slow: ~1 min per 224 px model and core for 32 crops.

    .venv/bin/python bench/arm_matrix.py --res 96 --crops 16 --out bench/results/arm_matrix.json
    .venv/bin/python bench/arm_matrix.py --models efficientnet_lite0 --pretrained --res 224 --crops 32 \\
        --precisions int8 --cpus cortex-a53,cortex-a76

Each cell runs ``edgekit.pipeline.export`` (the code path of ``edgekit export --arch aarch64``,
latency off) and keeps the rows whose stage names end in ``@aarch64`` / ``x86↔aarch64``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source tree
    sys.path.insert(0, str(ROOT))

SCHEMA = "edgekit.bench.arm_matrix/1"


def focus_models() -> list[str]:
    from edgekit.models import list_specs

    return sorted(s.name for s in list_specs() if s.focus)


def cell(model: str, target: str, precision: str, args, cpus: tuple[str, ...], work: Path) -> dict:
    from edgekit.console import Console
    from edgekit.contracts import ExportRequest
    from edgekit.pipeline import export

    req = ExportRequest(model=model, target=target, precision=precision, input_shape=(1, 3, args.res, args.res),
                        out=work / f"{model}-{target}-{precision}", samples=max(args.crops, args.samples),
                        pretrained=args.pretrained, bench=False, threads=1, arch="aarch64", arm_cpus=cpus,
                        arm_samples=args.crops)
    t0 = time.perf_counter()
    result = export(req, Console(quiet=not args.verbose))
    rows = []
    for c in result.comparisons:
        if "aarch64" not in c.stage:
            continue
        o = c.primary()
        rows.append({"stage": c.stage, "runner": c.runner, "precision": c.precision, "passed": c.passed,
                     "failures": c.failures, "max_abs": o.max_abs, "cosine": o.cosine,
                     "sqnr_db": o.sqnr_db if o.sqnr_db != float("inf") else "inf", "top1": o.top1,
                     "samples": o.samples, "kernels": c.note})
    return {"model": model, "target": target, "precision": precision, "res": args.res,
            "pretrained": args.pretrained, "crops": args.crops, "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated (default: every focus model)")
    p.add_argument("--targets", default="onnx", help="comma-separated: onnx, executorch, ncnn")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--cpus", default="cortex-a53,cortex-a76", help="QEMU_CPU models")
    p.add_argument("--res", type=int, default=96)
    p.add_argument("--crops", type=int, default=16, help="held-out crops run under emulation")
    p.add_argument("--samples", type=int, default=32, help="held-out crops for the host parity")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/arm_matrix.json")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    models = args.models.split(",") if args.models else focus_models()
    cpus = tuple(args.cpus.split(","))
    cells = []
    with tempfile.TemporaryDirectory(prefix="edgekit-arm-") as tmp:
        for model in models:
            for target in args.targets.split(","):
                for precision in args.precisions.split(","):
                    try:
                        c = cell(model, target, precision, args, cpus, Path(tmp))
                    except Exception as exc:  # one failed cell must not lose the others
                        c = {"model": model, "target": target, "precision": precision, "error": str(exc)[:300]}
                    cells.append(c)
                    for r in c.get("rows", []):
                        print(f"{model:22s} {target:10s} {r['stage']:28s} {r['runner'][-40:]:40s} "
                              f"max_abs {r['max_abs']:.2e} sqnr {r['sqnr_db'] if isinstance(r['sqnr_db'], str) else round(r['sqnr_db'], 1)} "
                              f"top1 {r['top1'] if r['top1'] is None else round(r['top1'], 3)}", flush=True)
                    if "error" in c:
                        print(f"{model} {target} {precision}: error: {c['error']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "host": platform.machine(), "cpus": cpus, "cells": cells,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
