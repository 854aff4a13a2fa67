"""``edgekit ci``: run the project's parity gate from edgekit.toml and write JUnit XML."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "ci", help="run the parity checks of edgekit.toml and write JUnit XML",
        description="Export every model/target/precision named in the project file, compare each stage with "
                    "PyTorch, and write one JUnit testcase per cell (a parity failure names the model, target, "
                    "stage and metric). Exit 0 all passed, 1 a parity failure, 2 a configuration, export or bench "
                    "error. Format: docs/ci.md.")
    p.add_argument("--config", "-c", type=Path, default=Path("edgekit.toml"),
                   help="project file (default ./edgekit.toml; a pyproject.toml with [tool.edgekit] works too)")
    p.add_argument("--junit", type=Path, help="JUnit XML path (default OUT/junit.xml)")
    p.add_argument("--out", type=Path, help="override the project file's 'out' folder")
    p.add_argument("--check", action="store_true", help="validate the project file and list the cells; run nothing")
    p.add_argument("--cluster", metavar="ray|ray://HOST:PORT|HOST:PORT",
                   help="run the cells as tasks on a Ray cluster ('ray': $RAY_ADDRESS, else a local Ray); one "
                        "JUnit file; needs pip install 'edgekit[cluster]' (docs/fleet.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekit.ci import load_config, run_ci
    from edgekit.console import Console

    console = Console(quiet=getattr(args, "quiet", False))
    executor = None
    if args.cluster and not args.check:
        from edgekit.cluster import require_ray
        from edgekit.cluster.connect import resolve_address

        require_ray()
        resolve_address(args.cluster)  # a bad address fails before any work
    cfg = load_config(args.config)
    if args.out:
        cfg.out = args.out.resolve()
    if args.check:
        console.table(["cell", "input", "tolerance overrides"],
                      [[c.name, "x".join(map(str, c.input_shape)) if c.input_shape else "model default",
                        ", ".join(f"{k}={v:g}" for k, v in c.tolerance.items()) or "defaults"] for c in cfg.cells])
        return 0
    if args.cluster:
        from edgekit.cluster.ci import RayCiExecutor

        executor = RayCiExecutor(args.cluster)
    report, code = run_ci(cfg, console, args.junit, debug=getattr(args, "debug", False), executor=executor)
    passed = sum(r["status"] == "ok" for r in report["rows"])
    console.print(f"edgekit ci: {passed}/{len(report['rows'])} passed"
                  + {0: "", 1: " — parity FAILED", 2: " — errors"}[code])
    return code
