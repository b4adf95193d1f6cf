"""``baseline``: keeps every visual token. Every comparison includes it."""

from __future__ import annotations

import torch

from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy


class Baseline(Strategy):
    """Keeps every visual token; the unreduced model every comparison is paired against.

    >>> from tokenbench import StageContext
    >>> Baseline().select(StageContext.for_testing(num_visual=9, budget=3)).count
    9
    """

    name = "baseline"
    description = "Keeps every visual token (the unreduced model)."
    keeps_all = True
    default_keep = 1.0

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return ()

    def select(self, ctx: StageContext) -> Selection:
        return Selection(keep=torch.arange(ctx.num_tokens))
