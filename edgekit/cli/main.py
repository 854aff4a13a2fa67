"""``edgekit`` entry point: parse, dispatch, and turn errors into one line + exit code.

Exit codes (DESIGN.md §8): 0 success, 1 parity failure (artifact still written),
2 usage / dependency / export error (a model that calls ``sys.exit`` included),
130 Ctrl-C, 143 SIGTERM. Tracebacks only with ``--debug``, which keeps the exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import traceback

COMMANDS = ("models", "targets", "export", "parity", "lint", "bench", "report", "matrix", "ci", "worker", "arm")


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
    """Run one command; returns its exit code. Called as the program (``argv`` None), an
    interrupted run exits with its code at once (see :func:`_exit_now`)."""
    from edgekit import signals

    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EDGEKIT_DEBUG") == "1"
    before = os.environ.get("EDGEKIT_DEBUG")
    if debug:
        os.environ["EDGEKIT_DEBUG"] = "1"  # lets stages replay the output they capture
    code = None
    try:
        with signals.handled(then_ignore=as_program):
            code = _run(argv, debug)
            if signals.received() is not None and code not in (130, 143):
                # a library swallowed the interrupt and the command ran to its end
                print("interrupted: the command had finished; its output is complete", file=sys.stderr)
                code = signals.exit_code(signals.received())
    except KeyboardInterrupt:
        if code is None or not as_program:
            raise
        # the signal came in the few instructions between the command's end and the switch to
        # recording only: the command is over, and its exit code stands
    finally:  # one in-process call's --debug must not leak into the next (tests, API callers)
        if before is None:
            os.environ.pop("EDGEKIT_DEBUG", None)
        else:
            os.environ["EDGEKIT_DEBUG"] = before
    if as_program:
        # The command is over, whatever its code. A signal from here on must not turn that
        # into a kill (-2 from CPython's finalization, after its handlers are gone): handled()
        # left SIGINT/SIGTERM recorded only (then_ignore). The interpreter's own finish (module
        # teardown: about 1 s with torch and the runtimes loaded) does nothing the artifact
        # needs: exit handlers, flush, exit.
        _exit_now(code)
    return code


def _run(argv: list[str], debug: bool) -> int:
    from edgekit import signals
    from edgekit.errors import EdgekitError, UsageError, first_line

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except SystemExit as exc:  # argparse is done: this came from code the command ran (a model)
            raise UsageError(f"your model code called sys.exit({exc.code!r}), so the command stopped with "
                             "nothing written", hint="a model factory or forward must return or raise, "
                             "not exit") from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
        return _interrupted(signal.SIGTERM if isinstance(exc, signals.Terminated) else signal.SIGINT)
    except SystemExit:
        raise  # argparse: --help, --version, bad arguments
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of some backend's child process: an error like any other
        # ``edgekit models | head``: the reader left. Exit as a program killed by SIGPIPE would
        # (141), silently; an export stopped this way left nothing (its partial folder is gone).
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except Exception as exc:
        if signals.interrupt_in(exc) is not None or signals.received() is not None:
            # a library turned the interrupt into another error: still an interrupt, not the stage's fault
            return _interrupted(signals.received() or signal.SIGINT)
        if debug:
            traceback.print_exc()
        if isinstance(exc, EdgekitError):
            print(f"error: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"hint: {exc.hint}", file=sys.stderr)
            return exc.exit_code
        # an edgekit bug or an unexpected backend failure
        first = first_line(exc, None, empty="")
        print(f"error: unexpected {type(exc).__name__}: {first[:300]}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback, and please report it", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real file descriptor
        return False


def _interrupted(signum: int) -> int:
    from edgekit import signals

    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    done = signals.completed_outputs()
    if done:  # the signal came after an artifact's final rename (during the summary, a later matrix cell)
        kept = ", ".join(done[-3:]) + (f" and {len(done) - 3} more" if len(done) > 3 else "")
        print(f"{what}: stopped; complete and kept: {kept}; anything unfinished was removed", file=sys.stderr)
    else:
        print(f"{what}: stopped; unfinished output was removed", file=sys.stderr)
    return signals.exit_code(signum)


def _exit_now(code: int) -> None:
    """Exit with ``code`` after the exit handlers, skipping the interpreter's own finish:
    when an interrupt passed through C++ code (pybind11 eval) CPython would otherwise
    kill itself with SIGINT at exit, so the exit status would be -2, not 130; and a Ctrl-C
    during that finish would kill a command that had already completed."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (edgekit ... | head) or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
