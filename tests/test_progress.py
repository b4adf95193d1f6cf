"""The progress display of a comparison: plain lines off a terminal, a bar on one, an ETA that ignores resumed samples."""

from __future__ import annotations

import io
import re

import pytest

from tokenbench.progress import Progress, format_duration

LINE = re.compile(r"^tokenbench: run (\d+) of (\d+) \((.+)\): (\d+) of (\d+) samples \((\d+) %\), elapsed (.+?), (ETA .+|done)$")


def position(line: str) -> int:
    """The overall samples done that a plain progress line reports."""
    match = LINE.match(line)
    assert match, line
    return int(match[4])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_each_tenth_with_an_eta_from_computed_samples_only() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=False, interval_s=30.0, clock=clock)
    progress.begin(2, 50)
    progress.update(1, "baseline @ all", 50, 50)  # every sample of run 1 was already in the store
    for done in range(0, 51, 5):  # run 2 computes 5 samples every 10 s
        clock.now = 2.0 * done
        progress.update(2, "random @ 25.0%", done, 50)
    progress.close()
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert [position(line) for line in lines] == [50, 50, 60, 70, 80, 90, 100]  # run 1, run 2's start, then every 10 %
    assert lines[0] == "tokenbench: run 1 of 2 (baseline @ all): 50 of 100 samples (50 %), elapsed 0 s, ETA not yet known"
    # 10 samples computed in 20 s, 40 left: 80 s (counting the 50 resumed ones as work would promise 13 s)
    assert lines[2] == "tokenbench: run 2 of 2 (random @ 25.0%): 60 of 100 samples (60 %), elapsed 20 s, ETA 1 min 20 s"
    assert lines[-1] == "tokenbench: run 2 of 2 (random @ 25.0%): 100 of 100 samples (100 %), elapsed 1 min 40 s, done"


def test_plain_lines_every_interval_between_tenths() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=False, interval_s=30.0, clock=clock)
    progress.begin(1, 1000)
    for done in range(0, 91, 1):  # 1 sample every 5 s: 9 % in 450 s, no tenth crossed
        clock.now = 5.0 * done
        progress.update(1, "fastv @ 64", done, 1000)
    positions = [position(line) for line in out.getvalue().splitlines()]
    assert positions == list(range(0, 91, 6))  # the start, then every 30 s


def test_quiet_prints_nothing_but_log_lines() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=False, tty=False)
    progress.begin(1, 4)
    progress.update(1, "random @ 4", 0, 4)
    progress.update(1, "random @ 4", 4, 4)
    progress.log("random @ 4: resumed")
    assert out.getvalue() == "tokenbench: random @ 4: resumed\n"


def test_a_terminal_gets_one_bar_over_every_run() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.begin(2, 8)
    progress.update(1, "baseline @ all", 0, 8)
    progress.update(1, "baseline @ all", 8, 8)
    progress.log("a message above the bar")
    progress.update(2, "random @ 25.0%", 8, 8)
    progress.close()
    text = out.getvalue()
    assert "\r" in text and "run 2/2 random @ 25.0%" in text and "16/16 samples, elapsed " in text and "a message above the bar\n" in text
    assert "tokenbench: run" not in text  # no plain lines on a terminal


def test_durations_say_their_unit() -> None:
    assert [format_duration(s) for s in (0, 59.4, 60, 3599, 3600, 86399)] == ["0 s", "59 s", "1 min 00 s", "59 min 59 s", "1 h 00 min", "23 h 59 min"]


def test_a_terminal_without_a_width_gets_the_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pseudo-terminal of 0 columns (script, some CI runners) would draw an empty bar."""
    import os

    class Pty(io.StringIO):
        def isatty(self) -> bool:
            return True

        def fileno(self) -> int:
            return 2

    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert not Progress(Pty()).tty
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((100, 30)))
    assert Progress(Pty()).tty and not Progress(io.StringIO()).tty
