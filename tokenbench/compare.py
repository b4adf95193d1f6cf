"""`tokenbench compare`: every strategy at every budget, paired with the baseline, stored.

Everything that can be checked without loading a model is checked first (names,
parameters, budgets against the checkpoint's token count, the task's files), so a
typo costs a second, not a model load.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from tokenbench.adapter import Adapter
from tokenbench.batching import choose_batch_size
from tokenbench.budget import FULL, Budget
from tokenbench.distributed import StoreLock, World, merge_shards, shard_path
from tokenbench.environment import environment
from tokenbench.errors import ModelLoadError, UsageError
from tokenbench.harness import StrategySpec, evaluate
from tokenbench.named_model import NamedModel
from tokenbench.progress import Progress
from tokenbench.registry import Registry, unknown_name_message
from tokenbench.results import Comparison, RunResult
from tokenbench.store import DEFAULT_STORE, SampleRecord, Store, run_key
from tokenbench.strategy import Strategy
from tokenbench.task import Sample, Task, stratified_subset


@dataclass(frozen=True)
class ModelChoice:
    """What ``--model`` named: the location adapters load, and the name results record."""

    location: str
    #: the registered name (recorded instead of the install-specific path), or None for a path or hub id
    name: str | None = None


def resolve_model(registry: Registry, model: str | None) -> ModelChoice:
    """A registered model name (none given: the registry's default model), else a path or hub id."""
    name = model or registry.default("models")
    if name is None:
        raise UsageError("no --model given and no installed plugin registers a default model; pass --model PATH_OR_HUB_ID")
    if name in registry.entries["models"]:
        named = cast("type[NamedModel]", registry.load("models", name))
        return ModelChoice(named.location(), name)
    return ModelChoice(name)


def default_task(registry: Registry) -> str:
    """The task run when ``--task`` is not given: the one a plugin registered with ``default=True``."""
    name = registry.default("tasks")
    if name is None:
        raise UsageError("no --task given and no installed plugin registers a default task; pass --task NAME[:PATH]")
    return name


@dataclass
class CompareRequest:
    strategies: list[StrategySpec]
    budgets: list[Budget]
    model: str | None = None
    task: str | None = None
    task_options: dict[str, str] = field(default_factory=dict)
    adapter: str | None = None
    model_options: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    #: the attention kernel the model loads with (``None``: the adapter's default, sdpa)
    attn_implementation: str | None = None
    #: samples per batch (``None``: chosen for the device and dtype, :func:`tokenbench.batching.choose_batch_size`)
    batch_size: int | None = None
    store: str = DEFAULT_STORE
    on_error: str = "skip"
    #: samples in the timed loop (0: no timing); new tokens forced in each timed call
    timing_samples: int = 0
    timing_tokens: int = 8


def _task_from_spec(registry: Registry, spec: str, options: dict[str, str]) -> Task:
    name, _, path = spec.partition(":")
    cls = registry.load("tasks", name)
    task: Task = cls(path or None, **options)
    return task


def resolve_strategies(registry: Registry, specs: Sequence[StrategySpec]) -> list[Strategy]:
    """Instantiate the strategies (baseline first, added if missing), validating parameters."""
    names = [s.name for s in specs]
    if "baseline" not in names:
        specs = [StrategySpec("baseline")] + list(specs)
    out: list[Strategy] = []
    for spec in specs:
        cls = registry.load("strategies", spec.name)
        out.append(cls(**spec.params))
    return out


def adapter_for(registry: Registry, model: str, override: str | None) -> type[Adapter]:
    """Pick the adapter by the checkpoint's ``model_type`` (or the ``--adapter`` override)."""
    if override:
        return registry.load("adapters", override)
    config = read_config(model)
    model_type = config.get("model_type") if config else None
    for entry in registry.entries["adapters"].values():
        if model_type in entry.meta.get("model_types", ()):
            return entry.load()
    if model_type is None:
        raise UsageError(f"cannot tell the model type of {model!r} without its config.json; pass --adapter NAME")
    known = sorted(t for e in registry.entries["adapters"].values() for t in e.meta.get("model_types", ()))
    raise UsageError(f"no adapter serves model_type {model_type!r} ({model}); served: {', '.join(known)}; pass --adapter NAME")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    """The Hugging Face hub is switched off for this process (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model_source(model: str) -> None:
    """One line, before anything loads, when ``--model`` is neither a checkpoint here nor a hub id that can load.

    >>> check_model_source("/no/such/checkpoint")
    Traceback (most recent call last):
    ...
    tokenbench.errors.ModelLoadError: /no/such/checkpoint: no such directory (--model takes a checkpoint directory, a hub id such as llava-hf/llava-1.5-7b-hf, or a name from 'tokenbench list models')
    """
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelLoadError(f"{model}: no config.json there; point --model at a saved Hugging Face checkpoint directory")
        return
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise ModelLoadError(
            f"{model}: no such directory (--model takes a checkpoint directory, a hub id such as "
            "llava-hf/llava-1.5-7b-hf, or a name from 'tokenbench list models')"
        )
    if hub_offline() and read_config(model) is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelLoadError(
            f"{model}: not in the local Hugging Face cache ({HF_HUB_CACHE}) and the hub is switched off "
            f"(HF_HUB_OFFLINE=1); fetch it where there is network with 'hf download {model}', or pass a local checkpoint path"
        )


def read_config(model: str) -> dict[str, Any] | None:
    path = Path(model).expanduser() / "config.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    try:  # a hub id already in the local cache
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        if isinstance(cached, str):
            return dict(json.loads(Path(cached).read_text()))
    except Exception:  # noqa: BLE001 - no cache, no config: the adapter override decides
        pass
    return None


class Prepared(NamedTuple):
    """Everything :func:`prepare` checked: what a run needs before its model loads."""

    task: Task
    samples: list[Sample]
    strategies: list[Strategy]
    adapter_cls: type[Adapter]
    model: ModelChoice


def prepare(request: CompareRequest, registry: Registry) -> Prepared:
    """All checks that need no model: task, samples, strategies, adapter class and model."""
    choice = resolve_model(registry, request.model)
    model = choice.location
    check_model_source(model)
    task_spec = request.task or default_task(registry)
    for spec in request.strategies:
        if spec.name not in registry.entries["strategies"]:
            raise UsageError(unknown_name_message("strategy", spec.name, registry.names("strategies")))
    task_name = task_spec.partition(":")[0]
    if task_name not in registry.entries["tasks"]:
        raise UsageError(unknown_name_message("task", task_name, registry.names("tasks")))
    if request.limit is not None and request.limit <= 0:
        raise UsageError(f"--limit must be positive, got {request.limit}")
    if request.timing_samples < 0 or request.timing_tokens < 1:
        raise UsageError(f"--timing-samples must be >= 0 and --timing-tokens >= 1, got {request.timing_samples} and {request.timing_tokens}")
    try:
        strategies = resolve_strategies(registry, request.strategies)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    adapter_cls = adapter_for(registry, model, request.adapter)
    config = read_config(model)
    capacity = adapter_cls.visual_token_capacity(config) if config else None
    for budget in request.budgets:
        budget.check(capacity)
    task = _task_from_spec(registry, task_spec, request.task_options)
    for strategy in strategies:
        if strategy.needs_ground_truth and not task.provides_relevant_tokens:
            raise UsageError(
                f"strategy {strategy.name!r} needs a task that knows which visual tokens each answer depends on; "
                f"task {task.name!r} does not (drop {strategy.name!r} from --strategies)"
            )
    samples = list(task.load())
    if request.limit is not None:
        samples = stratified_subset(samples, request.limit, request.seed)
    return Prepared(task, samples, strategies, adapter_cls, choice)


def run_config(adapter_desc: dict[str, Any], task: Task, strategy: Strategy, budget: Budget, request: CompareRequest, template: str) -> dict[str, Any]:
    """The whole effective configuration of one run: its hash is the run's key in the store."""
    from tokenbench import __version__

    return {
        "model": adapter_desc,
        "task": task.describe(),
        "strategy": strategy.name,
        "params": strategy.params,
        "budget": budget.label,
        "seed": request.seed,
        "dtype": request.dtype,
        "device_kind": request.device.split(":")[0],
        "prompt_template": template,
        "position_policy": strategy.position_policy,
        "max_new_tokens": task.max_new_tokens,
        "tokenbench": __version__,
    }


def load_options(request: CompareRequest) -> dict[str, str]:
    """What ``Adapter.load`` takes besides the location, device and dtype: ``--model-option``s and ``--attn-implementation``."""
    kernel = {"attn_implementation": request.attn_implementation} if request.attn_implementation else {}
    return {**request.model_options, **kernel}


def planned_runs(strategies: Sequence[Strategy], budgets: Sequence[Budget]) -> list[tuple[Strategy, Budget]]:
    """Every (strategy, budget) a comparison runs, in order: a strategy that keeps all tokens runs once, unreduced."""
    return [(s, b) for s in strategies for b in ([FULL] if s.keeps_all else (list(budgets) or [Budget("default")]))]


def run_comparison(
    request: CompareRequest,
    registry: Registry,
    *,
    prepared: Prepared | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    world: World | None = None,
) -> Comparison | None:
    """Run every strategy at every budget (``prepared``: :func:`prepare`'s result, if the caller already has it).

    In a data-parallel run (``world``, default: what the launcher's environment says;
    :mod:`tokenbench.distributed`) every process evaluates its share of the samples, and
    only rank 0 returns the comparison: the other ranks return ``None``.
    """
    world = world if world is not None else World.from_env()
    task, samples, strategies, adapter_cls, model = prepared if prepared is not None else prepare(request, registry)
    if world.size > len(samples):
        raise UsageError(f"{world.size} processes for {len(samples)} samples: start at most {len(samples)} (--num_processes), or raise --limit")
    lock = StoreLock(request.store)
    if world.is_main:  # before the model loads: a busy or unwritable store costs a second
        lock.acquire(f"tokenbench compare, {world.size} process{'es' if world.distributed else ''}, task {task.name}")
    try:
        return _run_locked(request, task, samples, strategies, adapter_cls, model, world, progress, log)
    finally:
        lock.release()
        world.close()


def _run_locked(
    request: CompareRequest,
    task: Task,
    samples: list[Sample],
    strategies: list[Strategy],
    adapter_cls: type[Adapter],
    model: ModelChoice,
    world: World,
    progress: Progress | None,
    log: Callable[[str], None] | None,
) -> Comparison | None:
    adapter = adapter_cls.load(model.location, device=world.device(request.device), dtype=request.dtype, **load_options(request))
    desc = adapter.describe()
    desc["device"] = request.device  # the same on every rank (cuda, not cuda:3), so every world size keys the same runs
    if model.name is not None:  # a named model's install path differs per machine; its name and weights hash do not
        desc["model"] = model.name
    env = environment(request.device)
    template = adapter.chat_prompt("{question}")
    batch_size = request.batch_size
    if batch_size is None:
        config = read_config(model.location)
        capacity = adapter_cls.visual_token_capacity(config) if config else None
        batch_size, why = choose_batch_size(adapter, world.device(request.device), request.dtype, capacity)
        if log:
            log(f"batch size {batch_size} ({why}; --batch-size N to override)")
    plan = [(s, b, run_config(desc, task, s, b, request, template)) for s, b in planned_runs(strategies, request.budgets)]
    if world.is_main:  # a killed run's shards first, then every run of the plan, before any rank reads
        with Store(request.store) as main:
            merge_shards(main, request.store)
            for _, _, config in plan:
                main.open_run(config)
    world.barrier()
    ids = [s.id for s in samples]
    with Store(request.store) as main:
        done = {run_key(config): main.done_ids(run_key(config)) & set(ids) for _, _, config in plan}
    mine = world.mine(len(samples)) if world.distributed else None
    share = len(mine) if mine is not None else len(samples)
    writer = Store(shard_path(request.store, world.rank)) if world.distributed else Store(request.store)
    if progress is not None:
        progress.begin(len(plan), share)
    try:
        for k, (strategy, budget, config) in enumerate(plan, 1):
            run_id = writer.open_run(config)
            label = f"{strategy.label} @ {budget.label}"
            update = functools.partial(progress.update, k, label) if progress is not None else None
            already = evaluate(
                adapter, task, samples, strategy, budget, writer, run_id, seed=request.seed, batch_size=batch_size,
                on_error=request.on_error, progress=update, positions=mine, done=done[run_id],
            )  # fmt: skip
            if already and log:
                log(f"{label}: resumed, {already} of {share} samples already done (run {run_id})")
    finally:
        if progress is not None:
            progress.close()
        writer.close()
    world.barrier()  # every rank's accuracy loop is over
    if not world.is_main:
        return None
    with Store(request.store) as store:
        merge_shards(store, request.store)
        runs: list[RunResult] = []
        timed: list[tuple[RunResult, Strategy, Budget]] = []
        traces, traces_key = adapter.flops_cache(), _traces_key(desc)
        if traces is not None:  # counted by an earlier run of this model: never traced again
            traces.preload(store.meta(traces_key) or {})
        for strategy, budget, config in plan:
            run_id = run_key(config)
            records = store.samples(run_id, ids)
            flops = _run_flops(adapter, store, run_id, records)
            if len(done[run_id]) < len(samples) or store.measurement(run_id, "environment") is None:
                store.put_measurement(run_id, "environment", env)  # provenance for leaderboards
            runs.append(RunResult(strategy.name, dict(strategy.params), budget, run_id, config, records, flops, len(done[run_id]), dict(strategy.defaults)))
            timed.append((runs[-1], strategy, budget))
        if traces is not None and traces.traces:
            store.put_meta(traces_key, traces.export())
        if request.timing_samples > 0:  # on rank 0's device alone, now that no accuracy loop runs
            from tokenbench.timing import TimingSettings, time_runs

            settings = TimingSettings(request.timing_samples, new_tokens=request.timing_tokens)
            time_runs(adapter, task, samples, timed, store, settings, seed=request.seed, device=world.device(request.device), log=log)
    by_id = {s.id: s for s in samples}
    metrics = {}
    for run in runs:
        ok = [r for r in run.records if r.error is None]
        metrics[run.run_id] = task.aggregate([by_id[r.sample_id] for r in ok], [float(r.score or 0.0) for r in ok], [r.prediction or "" for r in ok])
    return Comparison(desc, task.describe(), task.metric_kind, task.metric_name, env, runs, ids, metrics)


def _run_flops(adapter: Any, store: Store, run_id: str, records: list[SampleRecord]) -> dict[str, float] | None:
    """Mean FLOPs per sample over the run's successful samples (stored once per run), from their stored token counts.

    Counted once per distinct :class:`~tokenbench.adapter.TokenCounts` (most samples of
    a task share a few), each weighted by how many samples had it.
    """
    from collections import Counter

    from tokenbench.adapter import TokenCounts

    ok = [r for r in records if r.error is None and r.record]
    cached = store.measurement(run_id, "flops")
    if cached is not None and cached.get("n") == len(ok):
        return dict(cached["mean"])
    if not ok:
        return None
    totals: dict[str, float] = {}
    for counts, times in Counter(TokenCounts.from_record(rec.record) for rec in ok).items():
        flops = adapter.flops_for(counts)
        if flops is None:
            return None
        for k, v in flops.items():
            totals[k] = totals.get(k, 0.0) + v * times
    mean = {k: v / len(ok) for k, v in totals.items()}
    store.put_measurement(run_id, "flops", {"n": len(ok), "mean": mean})
    return mean


def _traces_key(desc: dict[str, Any]) -> str:
    """The store's key for a model's traced multiply-adds: its identity, without what cannot change a count."""
    return "macs:" + run_key({k: v for k, v in desc.items() if k not in ("device", "device_name")})
