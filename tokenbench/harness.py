"""The accuracy loop: one strategy at one budget over a task's samples, into the store.

Samples already in the store for the same run are read back, not recomputed. A
sample whose strategy raises or breaks the contract, or whose image cannot be read,
is recorded as an error with its reason; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenbench.adapter import Adapter, GenerationResult
from tokenbench.budget import Budget
from tokenbench.errors import SampleFailure, StrategyFailure
from tokenbench.store import SampleRecord, Store
from tokenbench.strategy import Strategy, strategy_label
from tokenbench.task import Sample, Task, TaskDataError


@dataclass(frozen=True)
class StrategySpec:
    """A strategy name with its command-line parameters (``name:key=value,...``)."""

    name: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return strategy_label(self.name, self.params)


def parse_strategies(text: str) -> list[StrategySpec]:
    """Parse ``--strategies``; a ``key=value`` item belongs to the strategy before it.

    >>> [s.label for s in parse_strategies("sppruner:context=false,merge=false,fastv")]
    ['sppruner:context=false,merge=false', 'fastv']
    """
    specs: list[StrategySpec] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item.split("=")[0]:
            if not specs:
                raise ValueError(f"--strategies: parameter {item!r} comes before any strategy name")
            key, _, value = item.partition("=")
            specs[-1].params[key.strip()] = value.strip()
            continue
        name, _, rest = item.partition(":")
        spec = StrategySpec(name.strip(), {})
        if rest:
            key, eq, value = rest.partition("=")
            if not eq:
                raise ValueError(f"--strategies: expected {name}:key=value, got {item!r}")
            spec.params[key.strip()] = value.strip()
        specs.append(spec)
    return specs


def check_counts(result: GenerationResult, labels: Sequence[str]) -> str | None:
    """Compare what each selection claimed with what the forward pass measured."""
    for label in labels:
        claimed = len(result.kept.get(label, [])) + result.kept_merged.get(label, 0) + result.merged.get(label, 0)
        layer = 0 if label == "vision" else int(label.split("@")[1]) + 1
        if layer < len(result.tokens_per_layer) and result.tokens_per_layer[layer] != claimed:
            return f"{label}: the selection claimed {claimed} visual tokens but layer {layer} received {result.tokens_per_layer[layer]}"
    return None


def check_budget(strategy: Strategy, result: GenerationResult) -> str | None:
    """A strategy that promises an exact token budget must deliver it."""
    if strategy.keeps_all or not strategy.exact_budget or strategy.budget_convention != "tokens":
        return None
    final = result.tokens_per_layer[-1] if result.tokens_per_layer else result.num_visual
    if final != result.budget:
        return f"kept {final} visual tokens after its last stage, but the budget is {result.budget}"
    return None


def _record(task: Task, sample: Sample, position: int, result: GenerationResult, strategy: Strategy, stage_labels: Sequence[str]) -> SampleRecord:
    mismatch = check_counts(result, stage_labels) or check_budget(strategy, result)
    record: dict[str, Any] = {
        "num_visual": result.num_visual,
        "grid": list(result.grid),
        "budget": result.budget,
        "tokens_per_layer": result.tokens_per_layer,
        "text_tokens": result.text_tokens,
        "kept": result.kept,
        "merged": result.merged,
        "kept_merged": result.kept_merged,
        "answer_margin": result.answer_margin,
        "selection_seconds": result.selection_seconds,
        "segments": [
            {**seg.to_record(), "tokens": seg.count, "kept": {label: counts[i] for label, counts in result.segment_counts.items()}}
            for i, seg in enumerate(result.all_segments)
        ],
    }
    if result.vision_inputs:
        record["vision_inputs"] = [list(shape) for shape in result.vision_inputs]
    record.update(task.diagnostics(sample, result))
    cluster = task.cluster(sample)
    if cluster is not None:  # the paired statistics test over clusters (tokenbench.stats_clustered)
        record["cluster"] = cluster
    score = None if mismatch else task.score(sample, result.prediction)
    return SampleRecord(sample.id, position, sample.kind, score, result.prediction, result.prompt, mismatch, record)


def _error(sample: Sample, position: int, reason: str) -> SampleRecord:
    return SampleRecord(sample.id, position, sample.kind, None, None, None, reason, {})


def evaluate(
    adapter: Adapter,
    task: Task,
    samples: Sequence[Sample],
    strategy: Strategy,
    budget: Budget,
    store: Store,
    run_id: str,
    *,
    seed: int = 0,
    batch_size: int = 8,
    on_error: str = "skip",
    progress: Callable[[int, int], None] | None = None,
    positions: Sequence[int] | None = None,
    done: Collection[str] = (),
) -> int:
    """Evaluate the samples not yet in the store; returns how many were already done.

    ``positions`` restricts the run to those positions in ``samples`` (a data-parallel
    rank's share; records keep their position in the whole list); ``done`` names samples
    already finished elsewhere (the main store, when ``store`` is a rank's shard).
    """
    done = set(done) | store.done_ids(run_id)
    share = [(i, samples[i]) for i in positions] if positions is not None else list(enumerate(samples))
    todo = [(i, s) for i, s in share if s.id not in done]
    already = len(share) - len(todo)
    labels = [s.label for s in strategy.schedule(adapter.info)]
    finished = already
    if progress:
        progress(finished, len(share))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        records = _run_chunk(adapter, task, chunk, strategy, budget, seed, labels)
        store.add_samples(run_id, records)  # one transaction per batch
        failed = next((rec for rec in records if rec.error), None)
        if failed is not None and on_error == "fail":
            raise SampleFailure(f"sample {failed.sample_id}: {failed.error}")
        finished += len(chunk)
        if progress:
            progress(finished, len(share))
    return already


def _run_chunk(
    adapter: Adapter, task: Task, chunk: Sequence[tuple[int, Sample]], strategy: Strategy, budget: Budget, seed: int, labels: Sequence[str]
) -> list[SampleRecord]:
    """One batch; a failing sample is recorded alone and never costs the others.

    A :class:`~tokenbench.errors.StrategyFailure` names the sample that broke (its index
    in the batch): that sample is recorded as an error and the rest rerun as one batch.
    Any other exception (an unreadable image, an adapter error) gives no index, so the
    batch is rerun one sample at a time to find the culprit.
    """
    samples = [s for _, s in chunk]
    try:
        prompts = [task.prompt(s, adapter.family) for s in samples]
        results = adapter.generate(samples, prompts, strategy, budget, seed=seed, max_new_tokens=task.max_new_tokens, stop_strings=task.stop_strings)
        return [_record(task, s, pos, r, strategy, labels) for (pos, s), r in zip(chunk, results)]
    except StrategyFailure as exc:
        if not 0 <= exc.index < len(chunk):
            raise
        bad = chunk[exc.index]
        rest = [item for i, item in enumerate(chunk) if i != exc.index]
        done = _run_chunk(adapter, task, rest, strategy, budget, seed, labels) if rest else []
        return sorted([*done, _error(bad[1], bad[0], _reason(exc))], key=lambda r: r.position)
    except Exception as exc:  # noqa: BLE001 - isolate: retry one by one to find the culprit
        if _out_of_memory(exc):  # the batch did not fit: free what it held, then each sample alone
            del exc
            _release_memory()
            if len(chunk) == 1:
                where = getattr(adapter, "device", "the device")
                return [
                    _error(chunk[0][1], chunk[0][0], f"out of memory on {where} for this sample alone (batch of 1); it needs a device with more free memory")
                ]
        elif len(chunk) == 1:
            return [_error(chunk[0][1], chunk[0][0], _reason(exc))]
    return [rec for item in chunk for rec in _run_chunk(adapter, task, [item], strategy, budget, seed, labels)]


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def _release_memory() -> None:
    """Return the failed batch's cached blocks to the device (a no-op on a CPU)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TaskDataError):
        return str(exc)
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"
