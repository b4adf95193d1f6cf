"""Progress of a whole comparison on stderr: where it is, how long it took, how long is left.

On a terminal, one tqdm bar over every run's samples; otherwise (a log file, CI, a batch
job, ``nohup``) a plain line at the start of every run, every ``interval_s`` seconds, at
every tenth of the samples (``steps``) and at the end. Both say the same: run k of K, samples done of the total,
elapsed time and the estimated time left. Samples resumed from the store count as done
but not towards the rate, so a resumed comparison does not promise a finish it cannot keep.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """Seconds as ``"7 s"``, ``"1 min 05 s"`` or ``"2 h 03 min"``.

    >>> format_duration(7.4), format_duration(65), format_duration(7380)
    ('7 s', '1 min 05 s', '2 h 03 min')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _is_terminal(stream: TextIO) -> bool:
    """A terminal with a width: a pseudo-terminal of 0 columns (``script``, some CI runners) would show an empty bar."""
    if not stream.isatty():
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """Progress over ``runs`` runs of ``samples`` samples each (:meth:`begin`), fed by :meth:`update`.

    ``enabled=False`` shows nothing (``--quiet``); :meth:`log` prints in every case, above
    the bar when one is shown. ``tty`` (default: whether ``stream`` is a terminal with a
    width) picks the bar or the plain lines.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        interval_s: float = 30.0,
        steps: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = _is_terminal(self.stream) if tty is None else tty
        self.interval_s = interval_s
        self.steps = steps
        self.clock = clock
        self._bar: Any = None
        self._runs = self._samples = 0
        self._start = self._last_line = 0.0
        self._run = 0
        self._overall = self._computed = 0
        self._next_step = 0

    @property
    def total(self) -> int:
        """Samples over every run."""
        return self._runs * self._samples

    def begin(self, runs: int, samples: int) -> None:
        """Start the clock: ``runs`` runs, each over the same ``samples`` samples."""
        self._runs, self._samples = runs, samples
        self._start = self._last_line = self.clock()
        self._run = self._overall = self._computed = self._next_step = 0
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.5,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} samples{postfix}",
            )  # tqdm puts ", " before a postfix

    def update(self, run: int, label: str, done: int, total: int) -> None:
        """Run ``run`` (1-based) of :meth:`begin`'s runs, named ``label``, has ``done`` of its ``total`` samples."""
        first = run != self._run
        overall = (run - 1) * self._samples + done
        if not first:  # the first report of a run is what the store already held
            self._computed += overall - self._overall
        self._run, self._overall = run, overall
        if not self.enabled:
            return
        now = self.clock()
        status = self._status(now)
        if self._bar is not None:
            self._bar.set_description_str(f"run {run}/{self._runs} {label}", refresh=False)
            self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(overall - self._bar.n)
            if first or overall >= self.total:
                self._bar.refresh()
            return
        crossed = overall * self.steps >= self._next_step * self.total  # integers: no rounding at a step's edge
        if crossed or first or now - self._last_line >= self.interval_s or overall >= self.total:
            self._last_line = now
            self._next_step = overall * self.steps // self.total + 1 if self.total else 0
            pct = 100 * overall / self.total if self.total else 100.0
            self.stream.write(f"tokenbench: run {run} of {self._runs} ({label}): {overall} of {self.total} samples ({pct:.0f} %), {status}\n")
            self.stream.flush()

    def _status(self, now: float) -> str:
        elapsed = now - self._start
        left = self.total - self._overall
        if left <= 0:
            return f"elapsed {format_duration(elapsed)}, done"
        if self._computed <= 0 or elapsed <= 0:
            return f"elapsed {format_duration(elapsed)}, ETA not yet known"
        return f"elapsed {format_duration(elapsed)}, ETA {format_duration(left * elapsed / self._computed)}"

    def log(self, message: str) -> None:
        """A ``tokenbench: message`` line, printed above the bar if one is shown."""
        line = f"tokenbench: {message}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
