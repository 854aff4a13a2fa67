"""``edgekit`` entry point: parse, dispatch, and turn errors into one line + exit code.

Exit codes (DESIGN.md §8): 0 success, 1 parity failure (artifact still written),
2 usage / dependency / export error. Tracebacks only with ``--debug``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("models", "targets", "export", "parity", "lint", "bench", "report", "matrix", "ci", "worker")


def build_parser() -> argparse.ArgumentParser:
    from edgekit import __version__

    parser = argparse.ArgumentParser(
        prog="edgekit",
        description="Export PyTorch vision models to edge targets and prove nothing broke on the way.",
        epilog="Run 'edgekit COMMAND --help' for a command's options. Exit codes: 0 ok, 1 parity failure, 2 error.")
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="print results only, no progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgekit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from edgekit.errors import EdgekitError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EDGEKIT_DEBUG") == "1"
    if debug:
        os.environ["EDGEKIT_DEBUG"] = "1"  # lets stages replay the output they capture
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        if debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # an edgekit bug or an unexpected backend failure
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: unexpected {type(exc).__name__}: {first[:300]}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback, and please report it", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
