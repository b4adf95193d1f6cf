"""``pooling``: 2-D average pooling of the h × w token grid down to about b cells.

The pooled grid (ph × pw) is chosen so that ph·pw is as close to b as possible without
exceeding it (ties: the aspect ratio closest to the grid's). Windows are those of
adaptive average pooling (start ⌊i·h/ph⌋, end ⌈(i+1)·h/ph⌉). Each pooled token takes the
position id of the token at its window's centre. A strong control on standard
benchmarks (VTC-Bench, arXiv 2510.07143). The count can fall short of b when b has no
factorisation that fits the grid; the tables show the tokens actually kept.

Several segments: each segment's grid is pooled on its own to a share of the budget in
proportion to its tokens (:func:`tokenbench.select_per_segment`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenbench.segment_selection import select_per_segment
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy


def pooled_grid(h: int, w: int, budget: int) -> tuple[int, int]:
    """The pooled grid for a budget.

    >>> pooled_grid(12, 12, 36)
    (6, 6)
    >>> pooled_grid(24, 24, 64)
    (8, 8)
    """
    best = (1, 1)
    for ph in range(1, h + 1):
        pw = min(w, budget // ph)
        if pw < 1:
            break
        key = (ph * pw, -abs(ph / pw - h / w))
        if key > (best[0] * best[1], -abs(best[0] / best[1] - h / w)):
            best = (ph, pw)
    return best


def _centres(n: int, m: int) -> torch.Tensor:
    """Centre index of each adaptive-pooling window (the windows of ``adaptive_avg_pool2d``; end exclusive)."""
    i = torch.arange(m)
    start = (i * n) // m
    end = -(-((i + 1) * n) // m)
    return (start + end) // 2  # odd windows: the middle token; even: the second of the two middle ones


class Pooling(Strategy):
    """Average pooling on the token grid (a control).

    >>> from tokenbench import StageContext
    >>> sel = Pooling().select(StageContext.for_testing(num_visual=16, budget=4))
    >>> sel.count, sel.merged_positions.tolist()
    (4, [5, 7, 13, 15])
    """

    name = "pooling"
    description = "2-D average pooling of the token grid to about b cells (control)."
    exact_budget = False

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    def select(self, ctx: StageContext) -> Selection:
        # several segments (AnyRes crops, tiles, frames): each grid pooled to its share of the budget
        return select_per_segment(ctx, self._pool)

    def _pool(self, ctx: StageContext) -> Selection:
        h, w = ctx.grid
        if ctx.num_tokens != h * w:
            raise ValueError(f"pooling needs the full {h}x{w} grid, got {ctx.num_tokens} tokens")
        ph, pw = pooled_grid(h, w, ctx.budget)
        grid = ctx.tokens.reshape(h, w, -1).permute(2, 0, 1)[None].float()
        merged = F.adaptive_avg_pool2d(grid, (ph, pw))[0].flatten(1).T.to(ctx.tokens.dtype)
        rows = _centres(h, ph)
        cols = _centres(w, pw)
        centres = (rows[:, None] * w + cols[None, :]).flatten()
        return Selection(
            keep=torch.zeros(0, dtype=torch.long),
            merged=merged,
            merged_positions=centres,
        )
