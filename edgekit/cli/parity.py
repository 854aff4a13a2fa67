"""``edgekit parity ARTIFACT``: re-check an artifact folder (or one ONNX file) against PyTorch."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.specs import int_option, parse_shape


def register(sub) -> None:
    p = sub.add_parser(
        "parity", help="re-check an exported artifact against the PyTorch model",
        description="Re-run stage-by-stage parity for an artifact folder written by 'edgekit export' "
                    "(every stage's sha256 is verified first), or for a single ONNX file given --model. "
                    "Nothing a manifest names is imported: an artifact made from your own model is re-checked "
                    "only when you name that model again with --model.")
    p.add_argument("artifact", type=Path, help="artifact folder (with artifact.json) or an .onnx file")
    p.add_argument("--model", help="the model to compare with: a zoo name (needed for a bare .onnx) or your "
                                   "path/to/file.py:factory | package.module:factory (needed for an artifact made "
                                   "from a user model; a changed file is reported)")
    p.add_argument("--weights", type=Path, help="checkpoint for --model")
    p.add_argument("--input-shape", type=parse_shape, help="NxCxHxW for a bare .onnx")
    p.add_argument("--calib", type=Path, help="image folder (or .npy/.npz array) for held-out samples (default: bundled "
                                                   "photos)")
    p.add_argument("--samples", type=int_option("--samples", 1), help="held-out samples (default as at export)")
    p.add_argument("--threads", type=int_option("--threads", 1, 1024))
    p.add_argument("--device")
    p.add_argument("--localize", action="store_true",
                   help="compare intermediate activations of the float and the final ONNX stage, name the "
                        "first and the worst diverging nodes")
    from edgekit.cli.arm import add_arch_options

    add_arch_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekit.console import Console
    from edgekit.contracts import ExportRequest
    from edgekit.recheck import recheck

    console = Console(quiet=args.quiet)
    given = ExportRequest(model=args.model or "", input_shape=args.input_shape, weights=args.weights, calib=args.calib,
                          samples=args.samples, threads=args.threads, device=args.device, localize=args.localize,
                          arch=args.arch, arm_cpus=tuple(args.arm_cpus or ()), arm_samples=args.arm_samples)
    comps, localization, yard = recheck(args.artifact, given, console)
    from edgekit.parity import parity_table

    console.print(parity_table(comps))
    if yard is not None:
        from edgekit.stability import describe

        console.print(f"yardstick: {describe(yard)}")
    passed = all(comps)
    console.print(f"\nparity: {'PASS' if passed else 'FAIL'}")
    if localization is not None:
        from calibration.localize import format_localization

        console.print("")
        console.print(format_localization(localization))
    return 0 if passed else 1
