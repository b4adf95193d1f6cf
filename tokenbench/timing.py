"""Wall-clock and memory: a timed loop, separate from the accuracy loop.

Protocol (``tokenbench compare --timing-samples N``; docs/measurement.md):

- the first ``N`` samples of the comparison are timed, batch size 1, with the same
  strategies, budgets, prompts and seed as the accuracy loop, but nothing timed is
  written to the per-sample records, so accuracy is unaffected;
- every configuration (strategy × budget) first runs ``warmup`` (≥ 2) untimed times;
- then, for each sample (and repeat), every configuration runs once, in an order that
  rotates by one from sample to sample, so that drift (thermal state, a neighbour's
  load, allocator state) spreads over all configurations instead of biasing one;
- every timed call generates exactly ``new_tokens`` tokens: EOS and stop strings are
  ignored (the decoder's ``min_new_tokens``), so decode cost compares like with like;
- phase boundaries are marked inside the forward pass by a :class:`PhaseTimer` that
  the timed loop activates for the call (a context variable, so the adapter's
  ``generate`` signature and the accuracy path do not change). Marks are CUDA events
  on a GPU (read after one synchronize at the end of the call) and
  ``time.perf_counter`` on CPU;
- results are medians with the interquartile range over the timed calls;
- peak memory comes from one extra, untimed call per configuration (measuring
  perturbs timing), inside a :class:`~tokenbench.memory.MemoryProbe`: on CUDA the
  allocator peak (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``); on CPU the peak growth of the resident set during the
  call (``VmHWM`` after a ``/proc/self/clear_refs`` reset; details in
  :mod:`tokenbench.memory`).

Phase marks (``mark_phase(name)``), in the order a call makes them:

``start``            the timed loop, just before ``adapter.generate``
``vision_start``     the adapter, just before the vision encoder (after preprocessing)
``prefill_start``    :func:`prefill_and_decode` entry (vision encoder done)
``selection_start`` / ``selection_end``   around each ``strategy.select`` call
``first_token``      the first token's logits exist (end of prefill)
``token``            each further decode step's logits exist
``end``              the timed loop, after ``generate`` returns

Time to first token runs from ``vision_start`` (or ``start`` for an adapter that does
not mark it; then it includes preprocessing) to ``first_token``: vision encoder,
signals, selection and prefill. Decode per token is ``(last token − first_token)`` /
number of decode steps.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenbench.memory import MemoryProbe

if TYPE_CHECKING:
    from tokenbench.adapter import Adapter
    from tokenbench.budget import Budget
    from tokenbench.store import Store
    from tokenbench.strategy import Strategy
    from tokenbench.task import Sample, Task

__all__ = [
    "MemoryProbe",
    "PhaseTimer",
    "TimedCall",
    "TimingConfig",
    "TimingSettings",
    "current_timer",
    "mark_phase",
    "summarise",
    "timed_loop",
    "timing_environment",
]

MIN_WARMUP = 2

_ACTIVE: ContextVar[PhaseTimer | None] = ContextVar("tokenbench_phase_timer", default=None)


def current_timer() -> PhaseTimer | None:
    """The timer of the timed call in progress, or ``None`` (always ``None`` in the accuracy loop)."""
    return _ACTIVE.get()


def mark_phase(name: str) -> None:
    """Mark a phase boundary if a timed call is in progress; a no-op otherwise."""
    timer = _ACTIVE.get()
    if timer is not None:
        timer.mark(name)


class PhaseTimer:
    """Records named time marks during one call: CUDA events on a GPU, ``perf_counter`` on CPU.

    ``force_new_tokens``: the decoder generates at least this many tokens, ignoring EOS
    and stop strings, while this timer is active.
    """

    def __init__(self, device: str = "cpu", *, force_new_tokens: int = 0) -> None:
        import torch

        self.device = str(device)
        self.cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        self.force_new_tokens = int(force_new_tokens)
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    @contextlib.contextmanager
    def active(self) -> Iterator[PhaseTimer]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def times(self) -> list[tuple[str, float]]:
        """``(name, seconds since the first mark)`` for every mark (synchronizes a GPU once)."""
        if not self.marks:
            return []
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            first = self.marks[0][1]
            return [(n, first.elapsed_time(e) / 1e3) for n, e in self.marks]
        t0 = self.marks[0][1]
        return [(n, t - t0) for n, t in self.marks]


@dataclass(frozen=True)
class TimedCall:
    """The phases of one timed call, in seconds (``None``: the adapter did not mark it)."""

    ttft: float | None
    decode_per_token: float | None
    decode_steps: int
    selection: float
    vision: float | None
    total: float
    from_vision_start: bool

    @classmethod
    def from_marks(cls, marks: Sequence[tuple[str, float]], selection_fallback: float = 0.0) -> TimedCall:
        at: dict[str, float] = {}
        for name, t in marks:
            at.setdefault(name, t)
        tokens = [t for n, t in marks if n == "token"]
        starts = [t for n, t in marks if n == "selection_start"]
        ends = [t for n, t in marks if n == "selection_end"]
        t0 = at.get("vision_start", at.get("start", 0.0))
        first = at.get("first_token")
        selection = sum(e - s for s, e in zip(starts, ends)) if starts else selection_fallback
        return cls(
            ttft=None if first is None else first - t0,
            decode_per_token=(tokens[-1] - first) / len(tokens) if tokens and first is not None else None,
            decode_steps=len(tokens),
            selection=selection,
            vision=at["prefill_start"] - at["vision_start"] if "prefill_start" in at and "vision_start" in at else None,
            total=at.get("end", marks[-1][1] if marks else 0.0) - at.get("start", 0.0),
            from_vision_start="vision_start" in at,
        )


@dataclass(frozen=True)
class TimingSettings:
    """What the timed loop does; together with the samples, device and threads it keys stored timings."""

    samples: int
    new_tokens: int = 8
    warmup: int = MIN_WARMUP
    repeats: int = 1
    memory: bool = True

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"--timing-samples must be >= 0, got {self.samples}")
        if self.new_tokens < 1:
            raise ValueError(f"--timing-tokens must be >= 1, got {self.new_tokens}")
        if self.warmup < MIN_WARMUP:
            raise ValueError(f"timing warm-up must be >= {MIN_WARMUP} untimed runs per configuration, got {self.warmup}")
        if self.repeats < 1:
            raise ValueError(f"timing repeats must be >= 1, got {self.repeats}")


@dataclass
class TimingConfig:
    """One configuration of the timed loop: a strategy at a budget."""

    strategy: Strategy
    budget: Budget
    label: str = ""
    calls: list[TimedCall] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.label:
            self.label = f"{self.strategy.name} @ {self.budget.label}"


def _stats(values: Sequence[float | None], scale: float = 1e3) -> dict[str, float] | None:
    vals = np.array([v for v in values if v is not None], dtype=float) * scale
    if vals.size == 0:
        return None
    q1, med, q3 = np.percentile(vals, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "n": int(vals.size)}


def summarise(config: TimingConfig) -> dict[str, Any]:
    """Medians and interquartile ranges (milliseconds) of a configuration's timed calls."""
    if config.error is not None:
        return {"error": config.error, "n": len(config.calls)}
    calls = config.calls
    ttft = _stats([c.ttft for c in calls])
    decode = _stats([c.decode_per_token for c in calls])
    sel = _stats([c.selection for c in calls])
    vision = _stats([c.vision for c in calls])
    total = _stats([c.total for c in calls])
    latency = {
        "ttft_median": ttft and ttft["median"],
        "ttft_iqr": ttft and ttft["iqr"],
        "ttft_q1": ttft and ttft["q1"],
        "ttft_q3": ttft and ttft["q3"],
        "decode_per_token_median": decode and decode["median"],
        "decode_per_token_iqr": decode and decode["iqr"],
        "selection_median": sel and sel["median"],
        "selection_iqr": sel and sel["iqr"],
        "vision_median": vision and vision["median"],
        "total_median": total and total["median"],
        "n": len(calls),
        "decode_steps": calls[0].decode_steps if calls else 0,
        "ttft_from": "vision_start" if calls and calls[0].from_vision_start else "call start (includes preprocessing)",
    }
    out: dict[str, Any] = {"latency_ms": latency, "peak_memory_mb": None}
    if config.memory:
        out["peak_memory_mb"] = config.memory["peak_mb"]
        out["memory"] = config.memory
    return out


def _preloaded(sample: Sample) -> Sample:
    """The sample with its images decoded once, so that file I/O stays out of the timed calls (a video is decoded in each call)."""
    try:
        images = sample.load_images()
        return replace(sample, image=images[0] if len(images) == 1 else images) if images else sample
    except Exception:  # noqa: BLE001 - a bad image fails inside the call, where it is reported
        return sample


def _call(adapter: Adapter, sample: Sample, prompt: str, config: TimingConfig, seed: int, new_tokens: int, timer: PhaseTimer | None) -> list[Any]:
    import torch

    with torch.no_grad():
        if timer is None:
            return adapter.generate([sample], [prompt], config.strategy, config.budget, seed=seed, max_new_tokens=new_tokens)
        with timer.active():
            timer.mark("start")
            results = adapter.generate([sample], [prompt], config.strategy, config.budget, seed=seed, max_new_tokens=new_tokens)
            timer.mark("end")
        return results


def timed_loop(
    adapter: Adapter,
    samples: Sequence[Sample],
    prompts: Sequence[str],
    configs: Sequence[TimingConfig],
    *,
    settings: TimingSettings,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
) -> list[TimingConfig]:
    """Warm up, then time every configuration on every sample, interleaved; fills ``config.calls``/``memory``.

    Round ``i`` times sample ``i mod n`` (``repeats`` passes over the samples), every
    configuration once, the order rotated by ``i``. ``deadline`` (a ``time.perf_counter``
    value): start no new round after it (every configuration keeps the same number of
    calls).
    """
    samples = [_preloaded(s) for s in samples]
    n_new = settings.new_tokens
    if not samples:
        return list(configs)
    for config in configs:  # warm-up on the first sample, forced tokens as in the timed calls; marks discarded
        for _ in range(settings.warmup):
            try:
                _call(adapter, samples[0], prompts[0], config, seed, n_new, PhaseTimer(device, force_new_tokens=n_new))
            except Exception as exc:  # noqa: BLE001 - a failing configuration is reported, the others go on
                config.error = f"{type(exc).__name__}: {exc}"
                break
    total = len(samples) * settings.repeats
    k = len(configs)
    for i in range(total):
        if deadline is not None and i > 0 and time.perf_counter() > deadline:
            break
        sample, prompt = samples[i % len(samples)], prompts[i % len(samples)]
        order = [configs[(j + i) % k] for j in range(k)]  # rotate by one per round
        for config in order:
            if config.error is not None:
                continue
            timer = PhaseTimer(device, force_new_tokens=n_new)
            try:
                results = _call(adapter, sample, prompt, config, seed, n_new, timer)
            except Exception as exc:  # noqa: BLE001
                config.error = f"{type(exc).__name__}: {exc}"
                continue
            call = TimedCall.from_marks(timer.times(), sum(r.selection_seconds for r in results))
            if call.ttft is not None and call.decode_steps != n_new - 1:
                config.error = f"the adapter made {call.decode_steps + 1} tokens, not the forced {n_new}"
                continue
            config.calls.append(call)
        if progress:
            progress(i + 1, total)
    if settings.memory:
        for config in configs:
            if config.error is not None:
                continue
            probe = MemoryProbe(device)
            try:
                with probe:
                    _call(adapter, samples[0], prompts[0], config, seed, n_new, PhaseTimer(device, force_new_tokens=n_new))
            except Exception as exc:  # noqa: BLE001 - timings stand without a memory figure
                config.memory = {"peak_mb": None, "growth_mb": None, "method": f"failed: {type(exc).__name__}: {exc}"}
                continue
            config.memory = {"peak_mb": probe.peak_mb, "growth_mb": probe.growth_mb, "method": probe.method}
    return list(configs)


def timing_environment(adapter: Adapter, device: str) -> dict[str, Any]:
    """Device name, dtype, attention implementation, threads and library versions."""
    from tokenbench.environment import environment

    env = environment(device)
    try:
        desc = adapter.describe()
    except Exception:  # noqa: BLE001 - an adapter without describe() still gets timed
        desc = {}
    env["dtype"] = desc.get("dtype")
    env["attention"] = desc.get("attention")
    env["timer"] = "torch.cuda.Event" if str(device).startswith("cuda") else "time.perf_counter"
    env["cpu_count"] = os.cpu_count()
    if hasattr(os, "getloadavg"):  # other work on the machine while timing: 1-minute load average
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
    return env


def timing_key(settings: TimingSettings, sample_ids: Sequence[str], env: dict[str, Any]) -> str:
    """The store's measurement name for these timing settings (``timing:<hash>``)."""
    from tokenbench.store import run_key

    return "timing:" + run_key(
        {
            "settings": settings.__dict__,
            "samples": list(sample_ids),
            "device": env.get("device"),
            "device_name": env.get("device_name"),
            "threads": env.get("threads"),
            "dtype": env.get("dtype"),
        }
    )


def time_runs(
    adapter: Adapter,
    task: Task,
    samples: Sequence[Sample],
    items: Sequence[tuple[Any, Strategy, Budget]],
    store: Store,
    settings: TimingSettings,
    *,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> None:
    """Time the comparison's runs (``items``: (run result, strategy, budget)), reusing stored timings.

    Sets ``run.timing`` on each run result. Timings are stored per run under a name
    keyed by the settings, the timed sample ids, the device and the thread count; when
    every run already has one, nothing is re-timed. When any is missing, all are timed
    again together, so that the configurations of one table are always interleaved.
    """
    chosen = list(samples)[: settings.samples]
    env = timing_environment(adapter, device)
    key = timing_key(settings, [s.id for s in chosen], env)
    cached = [store.measurement(run.run_id, key) for run, _, _ in items]
    if all(c is not None for c in cached):
        for (run, _, _), c in zip(items, cached):
            run.timing = c
        if log:
            log(f"timing: reused stored timings ({key})")
        return
    prompts = [task.prompt(s, adapter.family) for s in chosen]
    configs = [TimingConfig(strategy, budget) for _, strategy, budget in items]
    timed_loop(adapter, chosen, prompts, configs, settings=settings, seed=seed, device=device)
    for (run, _, _), config in zip(items, configs):
        value = {**summarise(config), "settings": dict(settings.__dict__), "sample_ids": [s.id for s in chosen], "environment": env}
        store.put_measurement(run.run_id, key, value)
        run.timing = value
    if log:
        failed = [c.label for c in configs if c.error]
        if failed:
            log(f"timing: failed for {', '.join(failed)}: {next(c.error for c in configs if c.error)}")
        if any(c.calls and not c.calls[0].from_vision_start for c in configs):
            log(f"timing: the {getattr(adapter, 'name', 'adapter')} adapter does not mark 'vision_start'; time to first token includes preprocessing")
