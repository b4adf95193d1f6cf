"""``attention-only``: the top-b visual tokens by encoder saliency, no merging.

Saliency for a CLIP-style encoder is the [CLS] row of the attention of the layer the
model takes its features from, head-averaged; for an encoder without [CLS]
(Qwen2.5-VL) the mean attention each patch receives in the last full-attention block,
pooled to the merged-token grid. The adapter computes it; this strategy only ranks.
Published as FasterVLM (arXiv 2412.01818 v1; VisPruner, its v2, adds diverse tokens: ``vispruner``). Ties break towards the earlier
token (``torch.topk`` on a stable sort), so results are deterministic.

Position ids: ``contiguous``. FasterVLM prunes the image features in LLaVA's
``encode_images``, before ``prepare_inputs_labels_for_multimodal`` splices them into
the prompt, so the language model sees a shorter sequence numbered from 0 with no gap
(``attention-only:positions=original`` keeps the unreduced ids instead).

Several segments (LLaVA-NeXT's base view and crop grid, InternVL's tiles, several
images, video frames): each segment is selected on its own, with a share of the budget
in proportion to its tokens (:func:`tokenbench.select_per_segment`). FasterVLM (Theia-4869/FasterVLM@f5d5f12, llava/model/llava_arch.py L141-157, L177) keeps the top k of every vision-tower pass on LLaVA-NeXT (the base view and each crop, k = budget / passes) and, on video, of every frame; at 672×672
the proportional shares are the official per-pass ones for the base view against the
crops, and within the crop grid tokens compete across crops (the official code gives
each crop the same k). The official code also drops the ``image_newline`` tokens and
skips unpadding; here the model's own input is kept (newlines stay, never pruned).
"""

from __future__ import annotations

import torch

from tokenbench.segment_selection import select_per_segment
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """All indices by score, highest first, ties to the lower index (a deterministic ``argsort``).

    >>> descending_order(torch.tensor([0.1, 0.5, 0.5, 0.2])).tolist()
    [1, 2, 3, 0]
    """
    return torch.sort(scores.float(), descending=True, stable=True).indices


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, ties to the lower index, returned ascending.

    >>> top_k_sorted(torch.tensor([0.1, 0.5, 0.5, 0.2]), 2).tolist()
    [1, 2]
    """
    return descending_order(scores)[:k].sort().values


class AttentionOnly(Strategy):
    """Keeps the ``budget`` most salient visual tokens.

    >>> from tokenbench import StageContext
    >>> ctx = StageContext.for_testing(num_visual=16, budget=4)
    >>> sel = AttentionOnly().select(ctx)
    >>> bool((ctx.saliency[sel.keep].min() >= ctx.saliency.sort().values[-4]).item())
    True
    """

    name = "attention-only"
    description = "Top-b tokens by encoder [CLS] saliency (FasterVLM)."
    position_policy = "contiguous"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision("saliency"),)

    def select(self, ctx: StageContext) -> Selection:
        # several segments (LLaVA-NeXT's base view and crops, tiles, frames): each on its own with
        # its share of the budget, as the official code selects per vision-tower pass (module docstring)
        return select_per_segment(ctx, self._select_one)

    def _select_one(self, ctx: StageContext) -> Selection:
        saliency = ctx.require("saliency")
        return Selection(keep=top_k_sorted(saliency, min(ctx.budget, ctx.num_tokens)), scores=saliency)
