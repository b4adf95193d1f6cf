"""``centre-crop``: keeps the b visual tokens nearest the centre of the token grid."""

from __future__ import annotations

import torch

import tokenbench


class CentreCrop(tokenbench.Strategy):
    """Keeps the ``budget`` tokens closest to the grid centre (Euclidean, ties to the lower index).

    >>> ctx = tokenbench.StageContext.for_testing(num_visual=16, budget=4)
    >>> CentreCrop().select(ctx).keep.tolist()
    [5, 6, 9, 10]
    """

    name = "centre-crop"
    description = "Keeps the b visual tokens nearest the image centre (example plugin)."
    defaults = {"aspect": 1.0}

    def schedule(self, model: tokenbench.ModelInfo) -> tuple[tokenbench.StageSpec, ...]:
        return (tokenbench.StageSpec.vision(),)

    def select(self, ctx: tokenbench.StageContext) -> tokenbench.Selection:
        h, w = ctx.grid
        rows = (ctx.origin // w).float() - (h - 1) / 2
        cols = ((ctx.origin % w).float() - (w - 1) / 2) * float(self.params["aspect"])
        dist = rows**2 + cols**2
        order = torch.sort(dist, stable=True).indices
        return tokenbench.Selection(keep=order[: ctx.budget].sort().values, scores=-dist)
