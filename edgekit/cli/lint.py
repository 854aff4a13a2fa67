"""``edgekit lint ARTIFACT --target tensorrt``: pre-flight checks of an ONNX graph, no GPU needed.

ARTIFACT is an ``.onnx`` file or an artifact folder written by ``edgekit export`` (its newest
ONNX stage is linted). Exit codes: 0 no errors (warnings allowed), 2 errors — the graph would
not build for the target, the same code as any unusable artifact (DESIGN §8).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "lint", help="check an ONNX graph against a target's documented support (no GPU needed)",
        description="Check an .onnx file, or the newest ONNX stage of an artifact folder, against the "
                    "target's documented operator, data-type, Q/DQ and dynamic-shape support. "
                    "Exit 0 without errors, 2 with errors.")
    p.add_argument("artifact", type=Path, help=".onnx file or artifact folder (with artifact.json)")
    p.add_argument("--target", "-t", default="tensorrt", help="target whose rules apply (default tensorrt)")
    p.add_argument("--trt-version", choices=("10", "11"), default=None,
                   help="TensorRT major version whose ONNX-parser table applies (default: the installed "
                        "TensorRT's, else 10)")
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.set_defaults(func=run)


def onnx_stage(path: Path):
    """The Artifact to lint: a bare .onnx file, or an artifact folder's newest ONNX stage."""
    from edgekit.artifact import MANIFEST, Artifact, Manifest
    from edgekit.errors import ArtifactError, UsageError

    path = Path(path)
    if path.is_dir() or path.name == MANIFEST:
        manifest = Manifest.read(path)
        stages = [s for s in manifest.stages if s.format == "onnx"]
        if not stages:
            raise ArtifactError(f"{path} holds no ONNX stage to lint",
                                hint=f"stages: {[s.stage for s in manifest.stages]}")
        return stages[-1]
    if not path.exists():
        raise UsageError(f"no such file or folder: {path}")
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{path.name} is not an .onnx file or an artifact folder")
    return Artifact(path=path.resolve(), stage="onnx", format="onnx", precision="fp32", target="onnx", inputs=(),
                    sha256="-")


def format_problems(problems: list[dict]) -> str:
    from edgekit.console import format_table

    order = {"error": 0, "warning": 1}
    rows = [(p["level"], p.get("node", ""), p.get("op", ""), p.get("message", ""))
            for p in sorted(problems, key=lambda p: order.get(p.get("level"), 2))]
    return format_table(("level", "node", "op", "problem"), rows)


def run(args: argparse.Namespace) -> int:
    import json

    from edgekit.console import Console
    from edgekit.errors import UsageError
    from edgekit.targets import get_target

    console = Console(quiet=getattr(args, "quiet", False))
    target = get_target(args.target)
    stage = onnx_stage(args.artifact)
    if args.trt_version is not None and target.name != "tensorrt":
        raise UsageError("--trt-version applies to --target tensorrt only")
    problems = target.lint(stage, args.trt_version) if target.name == "tensorrt" else target.lint(stage)
    errors = sum(p.get("level") == "error" for p in problems)
    warnings = sum(p.get("level") == "warning" for p in problems)
    if args.json:
        console.print(json.dumps(problems, indent=2))
    elif problems:
        console.print(format_problems(problems))
    label = f"{target.name}" + (f" {args.trt_version}.x" if args.trt_version else "")
    summary = f"lint {stage.path.name} for {label}: {errors} error(s), {warnings} warning(s)"
    (console.info if args.json else console.print)(summary)
    return 2 if errors else 0
