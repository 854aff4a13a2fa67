"""Ctrl-C and SIGTERM stop every command the same way, whatever was running when they came.

The CLI installs :func:`handled` around a command: SIGINT raises ``KeyboardInterrupt``
and SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``), so every cleanup path
that runs for Ctrl-C (the partial artifact folder is removed) runs for SIGTERM too.
The handler also records the signal, because library code sometimes turns an interrupt
into something else (torch's exporter interrupted inside an import fails later with an
``AttributeError``) or swallows it (an interrupt inside a ``__del__``): :func:`received`
lets the CLI still report an interrupt, and :func:`check` lets the artifact commit
refuse to complete after one. Exit codes: 130 for SIGINT, 143 for SIGTERM (128 + signal).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_completed: list[str] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs."""


_redeliveries: list[threading.Timer] = []


def _handler(signum, frame) -> None:
    _received.append(signum)
    if _in_import(frame):
        # An exception raised inside an import that C++ started (``import torch`` runs Python
        # modules from its extension's initialisation) aborts the process (SIGABRT, exit -6):
        # deliver the signal again shortly, once the import is done.
        t = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        t.daemon = True
        _redeliveries.append(t)
        t.start()
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _record_only(signum, frame) -> None:
    _received.append(signum)


def _install(handler) -> dict:
    """Put ``handler`` on SIGINT/SIGTERM, except where the parent set a signal to be ignored;
    returns the previous handlers."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, h in previous.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, handler)
    return previous


def ignore_late() -> None:
    """From now on SIGINT/SIGTERM are only recorded: the command has finished and the process
    is on its way out (main thread only; a signal the parent set to be ignored stays ignored)."""
    if _main_thread():
        _install(_record_only)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handled(then_ignore: bool = False) -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the duration (main thread only), then restore
    the previous ones. A signal the parent set to be ignored stays ignored. ``then_ignore``
    (the program, on its way out once the command is over): afterwards the signals are only
    recorded, as :func:`ignore_late` does, with no moment in between where the interpreter's
    default handler is back (a Ctrl-C landing there killed a finished export with a traceback)."""
    if not _main_thread():
        yield
        return
    _received.clear()
    _completed.clear()
    previous = _install(_handler)
    try:
        yield
    finally:
        if then_ignore:
            ignore_late()
            previous = {}
        for t in _redeliveries:
            t.cancel()
        _redeliveries.clear()
        _received.clear()  # a later library call in this process must not see this command's signal
        _completed.clear()
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a short critical section runs (removing a partial folder,
    the final renames): a second Ctrl-C must not leave half a cleanup. A signal that came
    meanwhile is raised when the section ends, unless an exception is already on its way."""
    if not _main_thread():
        yield
        return
    before = len(_received)
    previous = _install(_record_only)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
    if len(_received) > before:
        check()


def output_complete(path) -> None:
    """An artifact of this command is whole at ``path`` (renamed into place): an interrupt
    after this point must not be reported as if that output were removed."""
    _completed.append(str(path))


def completed_outputs() -> list[str]:
    """The outputs this command completed so far (cleared when :func:`handled` starts and ends)."""
    return list(_completed)


def received() -> int | None:
    """The last signal the installed handlers saw, or None."""
    return _received[-1] if _received else None


def check() -> None:
    """Raise the interrupt again if one was received (and swallowed by some library)."""
    s = received()
    if s is not None:
        raise Terminated() if s == signal.SIGTERM else KeyboardInterrupt()


def interrupt_in(exc: BaseException | None) -> BaseException | None:
    """The KeyboardInterrupt in ``exc``'s cause/context chain, if any (libraries wrap it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_code(signum: int | None) -> int:
    return 143 if signum == signal.SIGTERM else 130
