"""Terminal output: progress lines for long steps, warnings, tables.

Messages go to stderr so that stdout carries only results (tables, JSON) and can be
piped. ``quiet`` silences progress but never warnings.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
import time
from typing import Any, Iterator, Sequence, TextIO


PROGRESS_EVERY = 5.0  # seconds between progress lines of one step (a pipe or CI log gets lines, not a spinner)


class Console:
    def __init__(self, quiet: bool = False, err: TextIO | None = None, out: TextIO | None = None,
                 clock=time.perf_counter):
        self.quiet = quiet
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.warnings: list[str] = []
        self._clock = clock
        self._step_t0 = self._last_line = clock()
        self._shown: set[str] = set()   # phases of the current step that printed a line

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.err, flush=True)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        print(f"warning: {msg}", file=self.err, flush=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[dict[str, Any]]:
        """Announce a long step, then print how long it took and any detail it filled in."""
        self.info(f"• {title} ...")
        detail: dict[str, Any] = {}
        t0 = self._step_t0 = self._last_line = self._clock()
        self._shown = set()
        yield detail
        extra = f" — {detail['summary']}" if detail.get("summary") else ""
        self.info(f"  done in {self._clock() - t0:.1f}s{extra}")

    def progress(self, phase: str, done: int, total: int) -> None:
        """Where a long step is: a line ``  <phase> <done>/<total> (<s>s)`` at most every
        :data:`PROGRESS_EVERY` seconds, plus the phase's last count once it has shown one, so a
        step that ends quickly prints nothing extra and a slow one is never silent for long."""
        now = self._clock()
        last = done >= total and phase in self._shown
        if not last and now - self._last_line < PROGRESS_EVERY:
            return
        self._last_line = now
        self._shown.add(phase)
        self.info(f"  {phase} {done}/{total} ({now - self._step_t0:.0f}s)")

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.print(format_table(headers, rows))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def fmt_num(x: Any, kind: str = "g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if kind == "pct":
        return f"{x:.1%}"
    if kind == "cos":
        return f"{x:.6f}"
    if kind == "db":
        return "inf" if x == float("inf") else f"{x:.1f}"
    return f"{x:.2e}" if (x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4)) else f"{x:.4g}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextlib.contextmanager
def quiet_logs(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers to ``level`` and ignore warnings while the block runs: backends
    (torch.export, coremltools, executorch) log and warn at import and conversion time about
    things a user cannot act on."""
    saved = [(n, logging.getLogger(n).level) for n in names]
    for n in names:
        logging.getLogger(n).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in saved:
            logging.getLogger(n).setLevel(lvl)
