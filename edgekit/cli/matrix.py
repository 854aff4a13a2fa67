"""``edgekit matrix [MODELS...] --targets ... --precisions ...``: the benchmark table."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.specs import int_option, parse_shape


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub) -> None:
    from edgekit.cli.bench import add_timing_args

    p = sub.add_parser(
        "matrix", help="export, check and measure every model x target x precision",
        description="For every cell: export with 'edgekit export' (parity vs PyTorch on held-out photos), then "
                    "measure the final stage; torch eager FP32 is measured in the same run as the baseline. A "
                    "failing cell does not stop the others. Cells already built from an identical request are "
                    "reused. Writes OUT/matrix.json, .md and .html. Exit 0; 1 if a cell failed parity; 2 if a "
                    "cell could not be built or run.")
    p.add_argument("models", nargs="*", help="zoo models or aliases (default: mobilenet_v3 shufflenet_v2 "
                                             "efficientnet_b0)")
    p.add_argument("--targets", type=_csv, default=["all"],
                   help="comma-separated targets, or 'all' for every target that can run here (default)")
    p.add_argument("--precisions", type=_csv, default=["fp32", "int8"], help="comma-separated (default fp32,int8)")
    p.add_argument("--out", "-o", type=Path, default=Path("matrix"), help="output folder (default ./matrix)")
    p.add_argument("--batch", type=int_option("--batch", 1, 4096), default=1, help="static batch size (default 1)")
    p.add_argument("--input-shape", type=parse_shape, help="NxCxHxW for every model (default: each model's own)")
    p.add_argument("--calib", type=Path, help="folder of images (or a .npy/.npz array of preprocessed samples) for INT8 "
                                                   "calibration and held-out parity")
    p.add_argument("--samples", type=int_option("--samples", 1), help="held-out parity samples per cell")
    p.add_argument("--pretrained", action="store_true", help="use the pretrained weights that ship in a package")
    p.add_argument("--no-reuse", dest="reuse", action="store_false", help="rebuild every cell")
    from edgekit.bench.device import INT8_WEIGHTS

    p.add_argument("--ov-int8-weights", choices=INT8_WEIGHTS,
                   help="the OpenVINO INT8 cells' weights (edgekit export --ov-int8-weights): paired for x86 devices "
                        "without VNNI when the cells are exported elsewhere (docs/fleet.md); default auto, decided by "
                        "the CPU that exports")
    p.add_argument("--ort-int8-weights", choices=INT8_WEIGHTS,
                   help="the ONNX Runtime INT8 cells' weights (edgekit export --ort-int8-weights): paired for x86 "
                        "devices without VNNI when the cells are exported elsewhere; default auto, decided by the CPU "
                        "that exports")
    add_timing_args(p, seconds=1.0, warmup=5)
    add_cluster_args(p)
    p.set_defaults(func=run)


def target_options(args) -> dict[str, dict[str, str]]:
    """The targets' own options given to ``edgekit matrix`` (--ov-int8-weights, --ort-int8-weights)."""
    given = {"openvino": {"ov_int8_weights": args.ov_int8_weights}, "onnx": {"ort_int8_weights": args.ort_int8_weights}}
    return {t: {k: v for k, v in opts.items() if v} for t, opts in given.items() if any(opts.values())}


def add_cluster_args(p) -> None:
    """``--cluster`` (matrix and ci): run the cells as Ray tasks instead of in this process."""
    p.add_argument("--cluster", metavar="ray|ray://HOST:PORT|HOST:PORT",
                   help="run the cells on a Ray cluster: 'ray' ($RAY_ADDRESS, else a local Ray), a Ray client "
                        "address or a head's HOST:PORT; needs pip install 'edgekit[cluster]' (docs/fleet.md)")
    p.add_argument("--lost-device-timeout", type=float, default=120.0, metavar="S",
                   help="with --cluster: how long a device whose node left may take to come back before its "
                        "remaining cells become errors (default 120)")


def cluster_executor(args):
    """None (embedded, the default) or the Ray executor for ``--cluster``; exit 2 without Ray."""
    if not getattr(args, "cluster", None):
        return None
    from edgekit.cluster import require_ray
    from edgekit.cluster.connect import resolve_address

    require_ray()
    resolve_address(args.cluster)  # a bad address fails before any work
    from edgekit.cluster.executor import RayExecutor

    return RayExecutor(args.cluster, device_timeout=args.lost_device_timeout)


def run(args: argparse.Namespace) -> int:
    from edgekit.cli.bench import print_report
    from edgekit.console import Console
    from edgekit.matrix import DEFAULT_MODELS, MatrixConfig, exit_code, run_matrix
    from edgekit.report import write_outputs

    quiet = getattr(args, "quiet", False)
    executor = cluster_executor(args)
    console = Console(quiet=quiet)
    cfg = MatrixConfig(models=list(args.models or DEFAULT_MODELS), targets=args.targets,
                       precisions=args.precisions, out=args.out, threads=args.threads, warmup=args.warmup,
                       iters=args.iters, seconds=args.seconds, batch=args.batch, input_shape=args.input_shape,
                       calib=args.calib, samples=args.samples, pretrained=args.pretrained, device=args.device,
                       reuse=args.reuse, label=args.label, target_options=target_options(args))
    report = run_matrix(cfg, console, quiet=quiet, executor=executor)
    print_report(report, console)
    for p in write_outputs(report, args.out / "matrix.json", args.out / "matrix.md", args.out / "matrix.html"):
        console.info(f"wrote {p}")
    return exit_code(report)
