"""The embedded shapes task: a fixed balanced split, no train/eval overlap, oracle and recall."""

from __future__ import annotations

from collections import Counter

import torch

from tokenbench import StageContext, StageSpec
from tokenbench.adapter import GenerationResult
from tokenbench.tasks.shapes import scenes
from tokenbench.tasks.shapes.oracle import Oracle
from tokenbench.tasks.shapes.task import ShapesTask, relevant_tokens


def test_split_is_fixed_balanced_and_large_enough() -> None:
    samples = ShapesTask().load()
    assert len(samples) >= 1000
    kinds = Counter(s.kind for s in samples)
    assert len(kinds) >= 4 and max(kinds.values()) - min(kinds.values()) <= 1
    again = ShapesTask().load()
    assert [(s.id, s.question, s.answers) for s in samples] == [(s.id, s.question, s.answers) for s in again]
    assert samples[0].load_image().tobytes() == again[0].load_image().tobytes()


def test_answers_are_balanced_within_each_kind() -> None:
    samples = ShapesTask().load()
    for kind in {s.kind for s in samples}:
        answers = Counter(s.answers[0] for s in samples if s.kind == kind)
        assert max(answers.values()) <= 2 * min(answers.values()), (kind, answers)


def test_training_stream_never_contains_an_eval_item() -> None:
    keys = scenes.eval_keys()
    for i in range(3):
        batch = scenes.train_batch(stream=0, index=i, batch_size=64)
        assert all(scenes._key(s, q) not in keys for s, q in batch)


def test_relevant_cells_hold_the_subject() -> None:
    for scene, q in scenes.eval_split(40):
        occupied = {o.cell for o in scene.objects}
        assert q.relevant_cells and set(q.relevant_cells) <= occupied, q


def _ctx(sample_id: str, budget: int) -> StageContext:
    ctx = StageContext.for_testing(num_visual=144, budget=budget, stage=StageSpec.vision())
    ctx.sample_id = sample_id
    return ctx


def test_oracle_keeps_the_relevant_cells_first_then_their_neighbourhood() -> None:
    sample = ShapesTask().load()[3]
    relevant = relevant_tokens(sample.meta["relevant_cells"], (12, 12))
    keep = Oracle().select(_ctx(sample.id, len(relevant) + 8)).keep.tolist()
    assert set(relevant) <= set(keep) and len(keep) == len(relevant) + 8
    rows, cols = zip(*[(k // 12, k % 12) for k in keep if k not in relevant])
    assert all(min(max(abs(r - t // 12), abs(c - t % 12)) for t in relevant) == 1 for r, c in zip(rows, cols))


def test_relevant_token_recall_counts_kept_relevant_tokens() -> None:
    sample = ShapesTask().load()[7]
    relevant = relevant_tokens(sample.meta["relevant_cells"], (12, 12))
    result = GenerationResult("x", "p", 144, (12, 12), 10, [10, 10], kept={"vision": sorted(relevant[:1] + [k for k in range(9) if k not in relevant])})
    recall = ShapesTask().diagnostics(sample, result)["relevant_token_recall"]
    assert recall == 1 / len(relevant)
    full = GenerationResult("x", "p", 144, (12, 12), 144, [144, 144])
    assert ShapesTask().diagnostics(sample, full)["relevant_token_recall"] == 1.0


def test_relevant_tokens_on_a_coarser_grid() -> None:
    assert relevant_tokens([0, 1, 12, 13, 143], (6, 6)) == [0, 35]
    assert torch.tensor(relevant_tokens(list(range(144)), (6, 6))).tolist() == list(range(36))
