"""``shapes``: the embedded reference task (procedural scenes, four question kinds).

1,200 questions, balanced over the kinds ``attribute``, ``existence``, ``count`` and
``relation`` (see :mod:`tokenbench.tasks.shapes.scenes`). Each question knows the grid
cells its answer depends on, which gives two things no real benchmark can: the
``oracle`` strategy, and the per-sample diagnostic ``relevant_token_recall`` — the
share of those cells whose visual token survived the last reduction stage unmerged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from tokenbench.answers import exact_match
from tokenbench.task import Sample, Task
from tokenbench.tasks.shapes import scenes


@functools.lru_cache(maxsize=4)
def _split(n: int) -> tuple[Sample, ...]:
    out = []
    for scene, q in scenes.eval_split(n):
        out.append(
            Sample(
                id=q.id,
                image=functools.partial(scenes.render, scene),
                question=q.question,
                answers=(q.answer,),
                kind=q.kind,
                meta={"relevant_cells": q.relevant_cells, "grid": (scenes.GRID, scenes.GRID)},
            )
        )
    return tuple(out)


def relevant_tokens(cells: Sequence[int], grid: tuple[int, int]) -> list[int]:
    """Map scene cells (12×12, row-major) to token indices on a model's ``grid``.

    >>> relevant_tokens([0, 13, 143], (12, 12))
    [0, 13, 143]
    >>> relevant_tokens([0, 13, 143], (6, 6))
    [0, 35]
    """
    h, w = grid
    toks = {((c // scenes.GRID) * h // scenes.GRID) * w + (c % scenes.GRID) * w // scenes.GRID for c in cells}
    return sorted(toks)


class ShapesTask(Task):
    name = "shapes"
    description = "Procedural shapes VQA (attribute, existence, count, relation), 1,200 questions; the default task."
    metric_kind = "binary"
    metric_name = "exact match"
    max_new_tokens = 3
    defaults = {"n": scenes.EVAL_SIZE}
    provides_relevant_tokens = True

    def load(self) -> Sequence[Sample]:
        return list(_split(int(self.options["n"])))

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question

    def score(self, sample: Sample, prediction: str) -> float:
        return exact_match(prediction, sample.answers)

    def relevant_tokens(self, sample: Sample, grid: tuple[int, int]) -> list[int] | None:
        cells = sample.meta.get("relevant_cells")
        return relevant_tokens(cells, grid) if cells else None

    def diagnostics(self, sample: Sample, result: Any) -> dict[str, float]:
        relevant = relevant_tokens(sample.meta["relevant_cells"], tuple(result.grid))
        if not result.kept:
            return {"relevant_token_recall": 1.0}
        present = set(list(result.kept.values())[-1])
        return {"relevant_token_recall": sum(t in present for t in relevant) / len(relevant)}
