"""``oracle`` (shapes only): keeps the tokens each answer depends on, then their surroundings.

At the vision stage, keeps the relevant cells of the question first (the subjects and
the context the relation needs), then fills the budget with the cells nearest to them
on the grid (Chebyshev distance, ties to the lower index). It reads the relevant cells
from the task by sample id, so it works only on ``shapes`` samples: the upper bound of
any strategy at a budget, and a check that the reference model uses what it should.
"""

from __future__ import annotations

import functools

import torch

from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy
from tokenbench.tasks.shapes import scenes
from tokenbench.tasks.shapes.task import relevant_tokens


@functools.lru_cache(maxsize=1)
def _relevant_by_id() -> dict[str, tuple[int, ...]]:
    return {q.id: q.relevant_cells for _, q in scenes.eval_split(scenes.EVAL_SIZE)}


class Oracle(Strategy):
    name = "oracle"
    description = "shapes only: keeps the cells each answer depends on first (the upper bound at a budget)."
    needs_ground_truth = True

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    def select(self, ctx: StageContext) -> Selection:
        cells = _relevant_by_id().get(ctx.sample_id)
        if cells is None:
            raise ValueError(f"oracle works only on shapes samples; {ctx.sample_id!r} is not one")
        h, w = ctx.grid
        relevant = torch.tensor(relevant_tokens(cells, ctx.grid), dtype=torch.long)
        idx = ctx.origin
        rows, cols = idx // w, idx % w
        dist = torch.maximum((rows[:, None] - relevant[None, :] // w).abs(), (cols[:, None] - relevant[None, :] % w).abs())
        nearest = dist.min(dim=1).values.float()
        order = torch.sort(nearest * (h * w) + torch.arange(len(idx)), stable=True).indices
        return Selection(keep=order[: min(ctx.budget, len(idx))].sort().values, scores=-nearest)
