"""A one-line progress bar on stderr for long loops (the matrix), no dependency.

Drawn only when stderr is a terminal and not ``quiet``; otherwise each finished item
is one plain line (CI logs), or nothing under ``quiet``.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None, width: int = 24):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.bar = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.t0 = time.perf_counter()
        self.label = ""

    def _draw(self, text: str) -> None:
        filled = int(self.width * self.done / self.total)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {text}"
        cols = 100
        self.stream.write(line[:cols].ljust(cols))
        self.stream.flush()

    def start(self, label: str) -> None:
        self.label = label
        if self.bar:
            self._draw(f"{label} ...")

    def advance(self, result: str = "") -> None:
        self.done += 1
        if self.bar:
            self._draw(f"{self.label}: {result}" if result else self.label)
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {self.label}: {result}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar:
            self.stream.write(f"\r{' ' * 100}\r")
            self.stream.write(f"{self.done}/{self.total} cells in {time.perf_counter() - self.t0:.0f}s\n")
            self.stream.flush()
