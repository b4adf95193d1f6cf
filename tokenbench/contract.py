"""The contract every strategy meets, checked end to end on a real (tiny) model.

:func:`check_strategy_contract` runs a strategy through a real adapter on a tiny
checkpoint with a batch of two samples, at several budgets, twice, and checks:

- it never errors and every selection passes :func:`tokenbench.strategy.validate_selection`
  (sorted, unique, in-range indices; finite values);
- the budget holds, as measured inside the forward pass: exactly ``b`` visual tokens
  after the last stage (``budget_convention="tokens"``), at most ``b`` for strategies
  that declare ``exact_budget = False``, monotone pruning from at least ``b`` down to at
  most ``b`` (``"layer_average"``: the exact layer average is pinned per strategy, since a
  shallow test model cannot reach every average), every token for ``keeps_all``;
- the recorded kept indices are sorted, unique and in range at every stage;
- a rerun with the same seed gives the same selections and predictions;
- on a sample of two images (two segments, with the default tiny LLaVA, or with
  ``several_images=True``; not for strategies that read a task's ground truth), the
  budget holds for the whole sample and the per-segment counts the adapter records add
  up to the tokens that reached the last layer.

The project's own suite runs it over every registered strategy; a plugin package runs
it on its own class::

    from tokenbench.testing import check_strategy_contract

    def test_contract(tmp_path):
        check_strategy_contract(MyStrategy(), workdir=tmp_path)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenbench.adapter import Adapter, GenerationResult
from tokenbench.budget import Budget
from tokenbench.strategy import Strategy
from tokenbench.task import Sample


def contract_samples(n: int = 2) -> list[Sample]:
    """The first ``n`` samples of the default task (the embedded ``shapes`` task with the built-ins: images drawn, no files)."""
    from tokenbench.compare import default_task
    from tokenbench.registry import get_registry

    registry = get_registry()
    task_cls = registry.load("tasks", default_task(registry))
    return list(task_cls().load()[:n])


def contract_adapter(workdir: str | Path) -> Adapter:
    """A tiny random LLaVA (6×6 visual tokens, 4 decoder layers) saved to and loaded from ``workdir``,
    through the adapter the registry picks for its ``model_type``."""
    from tokenbench.compare import adapter_for
    from tokenbench.fixtures import tiny_llava_checkpoint
    from tokenbench.registry import get_registry

    path = Path(workdir) / "tiny-llava-contract"
    if not (path / "config.json").is_file():
        tiny_llava_checkpoint(path, image_size=48, patch_size=8, layers=4)
    return adapter_for(get_registry(), str(path), None).load(str(path))


def _require(ok: bool, message: str) -> None:
    """An explicit ``AssertionError`` (kept under ``python -O``, unlike ``assert``)."""
    if not ok:
        raise AssertionError(message)


def _check_result(strategy: Strategy, r: GenerationResult, b: int) -> None:
    name = strategy.name
    final, counts = r.tokens_per_layer[-1], r.tokens_per_layer
    if strategy.keeps_all:
        _require(final == r.num_visual, f"{name}: keeps_all but {final} of {r.num_visual} tokens reached the last layer")
    elif strategy.budget_convention == "layer_average":
        # The first layers see every token, so a shallow test model cannot reach every
        # layer-averaged budget; the contract is monotone pruning that brackets it.
        _require(all(a >= c for a, c in zip(counts, counts[1:])), f"{name}: visual tokens increase across layers {counts}")
        _require(final <= b <= counts[0], f"{name}: budget {b} is not bracketed by the first and last layer counts {counts}")
    elif strategy.exact_budget:
        _require(final == b, f"{name}: {final} visual tokens after the last stage, budget {b} (per layer {counts})")
    else:
        _require(0 < final <= b, f"{name}: {final} visual tokens after the last stage exceeds budget {b}")
    for label, kept in r.kept.items():
        _require(kept == sorted(set(kept)), f"{name} {label}: kept indices not sorted and unique: {kept}")
        _require(all(0 <= k < r.num_visual for k in kept), f"{name} {label}: kept index out of range")


def check_strategy_contract(
    strategy: Strategy,
    *,
    workdir: str | Path,
    adapter: Adapter | None = None,
    samples: Sequence[Sample] | None = None,
    budgets: Sequence[int] = (4, 12),
    seed: int = 0,
    several_images: bool | None = None,
) -> list[list[GenerationResult]]:
    """Raise ``AssertionError`` naming the strategy and the broken rule; returns the results.

    ``several_images``: also run a sample of two images (default: with the default adapter only).
    """
    several_images = adapter is None if several_images is None else several_images
    adapter = adapter or contract_adapter(workdir)
    samples = list(samples or contract_samples(2))
    prompts = [s.question for s in samples]
    runs = []
    for b in budgets:
        first = adapter.generate(samples, prompts, strategy, Budget("count", b), seed=seed, max_new_tokens=2)
        again = adapter.generate(samples, prompts, strategy, Budget("count", b), seed=seed, max_new_tokens=2)
        for r, r2 in zip(first, again):
            _check_result(strategy, r, b)
            _require(r.kept == r2.kept and r.prediction == r2.prediction, f"{strategy.name}: not deterministic under a fixed seed")
        runs.append(first)
    if several_images and not strategy.needs_ground_truth:  # ground truth is per image grid
        runs.append(_check_two_images(strategy, adapter, samples, budgets[-1], seed))
    return runs


def _check_two_images(strategy: Strategy, adapter: Adapter, samples: Sequence[Sample], b: int, seed: int) -> list[GenerationResult]:
    from dataclasses import replace

    two = replace(samples[0], id=f"{samples[0].id}+{samples[-1].id}", image=[samples[0].load_image(), samples[-1].load_image()])
    (r,) = adapter.generate([two], [two.question], strategy, Budget("count", b), seed=seed, max_new_tokens=2)
    _require(len(r.segments) == 2, f"{strategy.name}: a sample of two images gave {len(r.segments)} segments")
    _check_result(strategy, r, b)
    final = r.tokens_per_layer[-1]
    for label, counts in r.segment_counts.items():
        _require(len(counts) == 2, f"{strategy.name} {label}: {len(counts)} per-segment counts for two segments")
    if r.segment_counts:
        last = max(r.segment_counts, key=lambda label: -1 if label == "vision" else int(label.split("@")[1]))
        _require(sum(r.segment_counts[last]) == final, f"{strategy.name}: per-segment counts {r.segment_counts[last]} do not add up to {final}")
    return [r]
