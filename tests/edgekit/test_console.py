"""Progress lines for long steps (edgekit/console.py): a slow step is never silent for more than
PROGRESS_EVERY seconds, a quick one prints nothing extra. A fake clock, so nothing here is timed."""
from __future__ import annotations

import io

from edgekit.console import PROGRESS_EVERY, Console


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _console():
    clock, err = Clock(), io.StringIO()
    return Console(err=err, clock=clock), clock, err


def test_a_slow_phase_prints_a_line_per_interval_and_its_last_count():
    console, clock, err = _console()
    with console.step("INT8 calibration"):
        for i in range(1, 21):
            clock.t += PROGRESS_EVERY / 4          # 20 layers, a quarter interval each
            console.progress("weight rounding", i, 20)
        clock.t += 1.0
    lines = err.getvalue().splitlines()
    shown = [ln.strip() for ln in lines if ln.strip().startswith("weight rounding")]
    # t = 5, 10, 15, 20, 25 s after the step began: counts 4, 8, 12, 16, 20; the last one is not repeated
    assert shown == [f"weight rounding {i}/20 ({i * PROGRESS_EVERY / 4:.0f}s)" for i in (4, 8, 12, 16, 20)]
    assert lines[0] == "• INT8 calibration ..." and lines[-1] == "  done in 26.0s"


def test_a_quick_phase_prints_nothing_and_a_late_finish_is_shown():
    console, clock, err = _console()
    with console.step("calibration"):
        for i in range(1, 4):
            clock.t += 0.5
            console.progress("activation statistics", i, 3)     # 1.5 s in all: silent
        clock.t += PROGRESS_EVERY + 1
        console.progress("weight statistics", 1, 2)              # overdue: shown
        clock.t += 0.1
        console.progress("weight statistics", 2, 2)              # its last count, shown though 0.1 s later
    text = err.getvalue()
    assert "activation statistics" not in text
    assert "  weight statistics 1/2 (8s)\n  weight statistics 2/2 (8s)\n" in text


def test_quiet_prints_no_progress():
    clock, err = Clock(), io.StringIO()
    console = Console(quiet=True, err=err, clock=clock)
    with console.step("calibration"):
        clock.t += 10 * PROGRESS_EVERY
        console.progress("weight rounding", 1, 2)
    assert err.getvalue() == ""
