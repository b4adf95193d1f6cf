"""Command-line options shared by several subcommands, defined once.

``compare``, ``show`` and ``gate`` take the same budget flags, ``compare`` and
``show`` the same model and task flags, ``compare`` and ``gate`` the same ``--threads``:
each subcommand builds its parser from these helpers, so a flag's name, help and checks
cannot drift apart.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from tokenbench.budget import Budget
from tokenbench.errors import UsageError

T = TypeVar("T")
DTYPES = ("float32", "float16", "bfloat16")
#: the ``--attn-implementation`` choices (transformers' names)
ATTENTION_KERNELS = ("sdpa", "eager", "flash_attention_2")


def add_budget_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--budget`` (token counts) or ``--keep`` (fractions), mutually exclusive."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", help=f"{prefix}visual tokens to keep, comma list (e.g. 64,128)")
    group.add_argument("--keep", help=f"{prefix}fraction of visual tokens to keep, comma list (e.g. 0.222)")


def budgets(args: argparse.Namespace) -> list[Budget]:
    """The budgets the ``--budget``/``--keep`` flags give (``[]``: each strategy's default)."""
    return Budget.parse_option(args.budget, args.keep)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which model, task, seed, device and dtype a run uses."""
    parser.add_argument("--model", help="hub id, local checkpoint path or registered model name (default: the embedded reference model)")
    parser.add_argument("--adapter", help="adapter name, overriding the choice by the checkpoint's model_type")
    parser.add_argument("--task", help="NAME[:PATH] (default: the default task, shapes)")
    parser.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="task option, repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument(
        "--attn-implementation",
        choices=ATTENTION_KERNELS,
        help="the language model's attention kernel (default sdpa); attention-based strategies recompute their rows under any of them",
    )


def model_request(args: argparse.Namespace, **more: Any) -> Any:
    """A :class:`tokenbench.compare.CompareRequest` from the flags :func:`add_model_options` and
    :func:`add_budget_options` define, plus ``--strategies``; ``more`` sets the command's other fields."""
    from tokenbench.batching import default_dtype
    from tokenbench.compare import CompareRequest

    return CompareRequest(
        strategies=strategy_specs(args.strategies),
        budgets=budgets(args),
        model=args.model,
        task=args.task,
        task_options=key_values(args.task_option, "--task-option"),
        adapter=args.adapter,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype or default_dtype(str(args.device)),
        attn_implementation=args.attn_implementation,
        **more,
    )


def key_values(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; an item without ``=`` is a usage error naming ``flag``.

    >>> key_values(["min_pixels=3136"], "--model-option")
    {'min_pixels': '3136'}
    """
    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"{flag} takes key=value, got {item!r}")
        out[key] = value
    return out


def parsed(fn: Callable[[str], T], text: str) -> T:
    """``fn(text)``, with a ``ValueError`` turned into a one-line usage error."""
    try:
        return fn(text)
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(str(exc)) from None


def strategy_specs(text: str) -> Any:
    """``--strategies`` parsed into :class:`tokenbench.harness.StrategySpec` items."""
    from tokenbench.harness import parse_strategies

    return parsed(parse_strategies, text)


def positive_int(text: str) -> int:
    """An argparse ``type`` for a count that must be at least 1.

    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# -- CPU threads -----------------------------------------------------------------------
def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``; without it, :func:`apply_threads` picks the cores not already busy."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch CPU threads (default: the cores other work does not keep busy; printed at the start)",
    )


def cpu_threads(cores: int, load: float, online: int | None = None) -> int:
    """Torch CPU threads for a run: the ``cores`` not already busy, at least 1.

    ``load`` is the number of CPUs other work keeps busy (:func:`machine_load`), counted
    over ``online`` CPUs (the machine's, default ``cores``): ``cores * load / online`` of
    our cores count as busy. PyTorch's
    OpenMP threads spin while they wait for each other, so one thread on a core that
    another process keeps busy holds all of them back: on 2 cores at load 4, 2 threads
    took 21-30 s where 1 took 10-16 s (README, "CPU threads").

    >>> cpu_threads(2, 0.1), cpu_threads(2, 0.6), cpu_threads(2, 2.1), cpu_threads(16, 3.0)
    (2, 1, 1, 13)
    >>> cpu_threads(8, 32.0, online=64)  # a host-wide load on a 64-CPU host, 8 of them ours
    4
    """
    busy = load * cores / (online or cores)
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


@functools.cache
def usable_cores() -> int:
    """The threads torch uses by default, within this process's CPU affinity (read once, before any change)."""
    import torch

    cores = torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


class CpuLoad(NamedTuple):
    """How many CPUs other work keeps busy, and how that was measured (printed)."""

    busy: float
    #: how it was measured, with ``{busy}`` where the number goes: ``"1-minute load average {busy:.1f}"``
    template: str

    def describe(self) -> str:
        """>>> CpuLoad(2.14, "1-minute load average {busy:.1f}").describe()
        '1-minute load average 2.1'
        """
        return self.template.format(busy=self.busy)


def cpu_reading() -> tuple[float, float, float] | None:
    """(monotonic seconds, CPU-seconds the whole machine spent busy, CPU-seconds of this process), or ``None`` without ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is inside user)
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if fields[:1] != ["cpu"] or len(ticks) < 5:
        return None
    own = os.times()
    return time.monotonic(), (sum(ticks) - ticks[3] - ticks[4]) / hz, own.user + own.system


#: the reading when the command started (this module is imported first thing by the CLI)
_STARTED = cpu_reading()


def busy_elsewhere(start: tuple[float, float, float], now: tuple[float, float, float]) -> float:
    """CPUs kept busy by other processes between two :func:`cpu_reading` s: the machine's busy time less ours, per second.

    >>> busy_elsewhere((0.0, 100.0, 1.0), (2.0, 104.0, 2.5))  # 4 CPU-s busy in 2 s, 1.5 of them ours
    1.25
    """
    wall = now[0] - start[0]
    return max(0.0, (now[1] - start[1]) - (now[2] - start[2])) / wall if wall > 0 else 0.0


def machine_load() -> CpuLoad | None:
    """The CPUs other processes keep busy now, or ``None`` where the system cannot say.

    Measured since the command started (``/proc/stat``, the machine's busy CPU time less
    this process's own: at least the ~1 s of importing torch); without that, the
    1-minute load average, which still counts a run that has just finished for about a
    minute (after one tokenbench run, it read 1.3 on an idle 2-core machine and the next
    run took 1 thread).
    """
    return cpu_load(_STARTED, cpu_reading())


def cpu_load(start: tuple[float, float, float] | None, now: tuple[float, float, float] | None) -> CpuLoad | None:
    """:func:`machine_load` between two readings (at least 0.25 s apart), else from the load average."""
    if start is not None and now is not None and now[0] - start[0] >= 0.25:
        return CpuLoad(busy_elsewhere(start, now), "{busy:.1f} CPUs busy with other work over the last " + f"{now[0] - start[0]:.1f} s")
    try:
        return CpuLoad(os.getloadavg()[0], "1-minute load average {busy:.1f}")
    except (AttributeError, OSError):
        return None


def apply_threads(requested: int | None, report: Callable[[str], None] | None = None, *, share: int = 1) -> int:
    """Set torch's CPU threads: ``requested`` (``--threads``), else :func:`cpu_threads` on this machine, reported once.

    ``share`` processes of one data-parallel run on this machine split its cores.
    """
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
        return requested
    cores, load = usable_cores(), machine_load()
    if share > 1:
        cores = max(1, cores // share)
        load = None if load is None else load._replace(busy=load.busy / share)
    threads = cores if load is None else cpu_threads(cores, load.busy, os.cpu_count())
    torch.set_num_threads(threads)
    if report is not None:
        why = "load unknown" if load is None else load.describe()
        report(f"{threads} CPU thread{'' if threads == 1 else 's'} ({cores} core{'' if cores == 1 else 's'}, {why}; --threads N to override)")
    return threads


def quiet_weight_loading() -> None:
    """Silence transformers' "Loading weights" bar, shown on every model load, even of the 10 MB reference model.

    transformers' switch (:func:`transformers.utils.logging.disable_progress_bar`) also
    turns off huggingface_hub's bars; the download bars are turned back on when they were
    on, since a multi-GB download without one looks like a hang.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    downloads_shown = not are_progress_bars_disabled()
    logging.disable_progress_bar()
    if downloads_shown:
        enable_progress_bars()
