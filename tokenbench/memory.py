"""Peak memory of a block of code: the probe behind the timed loop's memory figure.

``with MemoryProbe(device) as probe: ...`` measures what the code inside the block
needs at its peak (``gc.collect()`` runs first, on either device):

- CUDA (a ``cuda...`` device, CUDA available): the caching allocator's peak,
  ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``,
  with the device synchronized at entry and exit. ``peak_mb`` is that peak, weights
  and anything else already allocated included; ``growth_mb`` subtracts
  ``torch.cuda.memory_allocated`` at entry.
- CPU (any other device): the peak growth of the process's resident set over its size
  at entry (``/proc/self/statm``; Linux only). Freed heap pages are returned to the
  system first (glibc ``malloc_trim(0)``), the kernel's peak-RSS mark is reset
  (``5`` written to ``/proc/self/clear_refs``), and ``VmHWM`` (``/proc/self/status``)
  after the block minus the RSS at entry is the peak growth: exact, not sampled.
  Where ``clear_refs`` cannot be written (or ``VmHWM`` cannot be read), a daemon
  thread samples ``/proc/self/statm`` every millisecond instead (coarser: a shorter
  peak can be missed). ``peak_mb`` and ``growth_mb`` are both that growth, never
  negative.

``probe.method`` says, in words, which of these measured it. ``ru_maxrss`` is not used
(it never goes down, so it cannot isolate one call), nor ``tracemalloc`` (it does not
see torch's allocations).
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import threading
from typing import Any

__all__ = ["MemoryProbe"]


def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _hwm_kb() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(r"VmHWM:\s+(\d+)", fh.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """Peak memory of the calls inside ``with probe:`` (see the module docstring).

    After the block: ``peak_mb`` (CUDA: the allocator's peak, weights included; CPU: the
    peak growth of the resident set over its size at entry), ``growth_mb`` (peak over
    what was in use at entry, on both) and ``method``.
    """

    def __init__(self, device: str = "cpu") -> None:
        import torch

        self.device = str(device)
        self.cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        self.peak_mb: float | None = None
        self.growth_mb: float | None = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_kb = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._max_kb = max(self._max_kb, _rss_kb())

    def __enter__(self) -> MemoryProbe:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            return self
        _malloc_trim()
        self._start = _rss_kb()
        if _reset_hwm() and _hwm_kb() is not None:
            self.method = "RSS growth: VmHWM (reset via /proc/self/clear_refs) minus VmRSS at entry, after malloc_trim"
        else:
            self.method = "RSS growth: /proc/self/statm sampled every 1 ms minus RSS at entry, after malloc_trim"
            self._max_kb = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mb = peak / 2**20
            self.growth_mb = (peak - self._start) / 2**20
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak_kb = max(self._max_kb, _rss_kb())
        else:
            peak_kb = _hwm_kb() or _rss_kb()
        self.growth_mb = max(0, peak_kb - self._start) / 1024
        self.peak_mb = self.growth_mb
