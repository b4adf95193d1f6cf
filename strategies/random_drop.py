"""``random``: keeps b visual tokens drawn uniformly without replacement.

Seeded from the run seed, the sample id and the strategy name (so reruns agree and
strategies do not share a draw); returned in original order. Published work finds it a
strong control (UniPruneBench, arXiv 2511.02650; Wen et al., ACL 2025 Findings,
arXiv 2502.11501).

Several segments: the draw is over all the sample's visual tokens together; separators
stay.
"""

from __future__ import annotations

import torch

from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy


def random_keep(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` of ``n`` indices, uniformly without replacement, sorted."""
    return torch.randperm(n, generator=generator)[:k].sort().values


class RandomDrop(Strategy):
    """Uniform random selection at the vision stage (a control).

    >>> from tokenbench import StageContext
    >>> RandomDrop().select(StageContext.for_testing(num_visual=16, budget=4)).keep.numel()
    4
    """

    name = "random"
    description = "Keeps b visual tokens drawn uniformly, seeded per sample (control)."

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    def select(self, ctx: StageContext) -> Selection:
        return Selection(keep=random_keep(ctx.num_tokens, min(ctx.budget, ctx.num_tokens), ctx.generator))
