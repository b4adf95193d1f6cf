"""``vispruner``: important tokens by [CLS] attention, plus diverse tokens left by de-duplicating the rest.

VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs", ICCV 2025, arXiv 2412.01818 v2 — v1 of that number is
FasterVLM, tokenbench's ``attention-only``; official code Theia-4869/VisPruner). Read at
commit ``aefa01adc7c7`` (main, 2025-07-01), which includes ``d7da3a33`` ("fix bug for",
the ``diverse_token_num > 0`` guards).

Where each rule is in the official code (file:line at that commit):

- ``llava/model/multimodal_encoder/clip_encoder.py:37-43``: the features are
  ``hidden_states[select_layer]`` (−2 for LLaVA-1.5) without [CLS], the attention is
  ``attentions[select_layer]``'s [CLS] row over the patches — the same layer.
- ``llava/model/llava_arch.py:148-151``: ``T`` = tokens to keep, ``T_imp = int(T · r)``
  (``r`` = ``important_ratio``), ``T_div = T − T_imp``.
- ``llava_arch.py:154-157``: attention averaged over heads, ``argsort`` descending; the
  first ``T_imp`` are the important tokens, the rest (``residual``) stay **in that
  descending-attention order**.
- ``llava_arch.py:160``: features L2-normalised (cosine similarity), before the projector
  (``llava_arch.py:185``).
- ``llava_arch.py:161-176``: while ``T_div > 0``: ``R`` = residual count,
  ``r = min(8, R − T_div)``; stop when ``r ≤ 0``. Split the residual list into ``a``
  (even positions) and ``b`` (odd positions); score each ``a`` token by its highest
  cosine similarity to any ``b`` token; drop the ``r`` highest-scoring ``a`` tokens (all of
  ``a`` when it has fewer than ``r``); the new residual list is the kept ``a`` tokens
  **in descending score order**, then ``b`` in its order. That order decides the next
  round's split.
- ``llava_arch.py:178-183``: keep important ∪ residual; ``llava_arch.py:272`` selects the
  projected features by that mask, in original order.
- ``llava_arch.py:368,377``: position ids ``arange(0, len)`` over the shortened sequence,
  and ``llava_arch.py:391-392`` hands ``position_ids=None`` to ``generate``
  (``llava_llama.py:151``): positions are **contiguous** (``position_policy``).
- ``llava/eval/model_vqa_loader.py:151-152``: defaults ``--visual_token_num 576``,
  ``--important_ratio 0.5``; the README runs ``128 0.5`` (64 important + 64 diverse).

Algorithm (as tokenbench runs it; N visual tokens, budget b, one vision stage): exactly
the steps above with ``T = b``, the adapter's encoder saliency as the attention (its
[CLS] row of the feature layer, head-averaged, for LLaVA) and the projected visual
tokens for the similarity. ``b ≥ N`` keeps every token (as the official code does with
``T = N``).

Parameters: ``important_ratio`` (float in [0, 1], default 0.5), ``prune_step`` (the most
``a`` tokens dropped per round, int ≥ 1, default 8 — a constant in the official code).
With no budget the adapter passes ``b = round(128/576 · N)`` (``default_keep``, the
README's setting). Budget convention: ``"tokens"``: b is the number of visual tokens
entering the language model, as in the paper ("Retain 128 tokens").

Deviations from the official code, and the adapter signal that would remove each:

- Similarity is the cosine of the projected visual tokens (``ctx.tokens``), not of the
  pre-projection features of the feature layer. Exact with: the feature layer's patch
  features before the projector, as a vision-stage signal. Measured on tiny random
  LLaVAs (8 random images each, ``important_ratio`` 0.5): of the diverse tokens, 65 %
  (36 tokens, b = 18) and 19 % (576 tokens, b = 64) are the ones the pre-projection
  features pick; the important tokens are the same by construction. A random projector
  reorders similarities strongly, so a trained model may differ less.
- Ties in the attention ranking and in the duplicate scores go to the lower position
  (``argsort`` is not stable there).
- Positions (``position_policy = "contiguous"``, applied by the adapter) as in the
  official code; ``vispruner:positions=original`` keeps the unreduced ids.
- Qwen2.5-VL (not in the official code, which supports LLaVA-1.5/NeXT) has no [CLS]: its
  saliency is the adapter's stand-in (mean attention received in the last
  full-attention block, per merged token).

Several segments (LLaVA-NeXT's base view and crop grid, InternVL's tiles, several
images, video frames): each segment is selected on its own, with a share of the budget
in proportion to its tokens (:func:`tokenbench.select_per_segment`). VisPruner (Theia-4869/VisPruner@aefa01a, llava/model/llava_arch.py L141-186, L207, L245-252) selects in every vision-tower pass on LLaVA-NeXT, T = budget / 5 at its fixed 672×672; at 672×672
the proportional shares are the official per-pass ones for the base view against the
crops, and within the crop grid tokens compete across crops (the official code gives
each crop the same k). The official code also drops the ``image_newline`` tokens and
skips unpadding; here the model's own input is kept (newlines stay, never pruned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenbench.errors import UsageError
from tokenbench.segment_selection import select_per_segment
from tokenbench.strategies.attention_only import descending_order
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy


def remove_duplicates(unit: torch.Tensor, residual: torch.Tensor, count: int, step: int) -> torch.Tensor:
    """The ``count`` indices left of ``residual`` by the official matching-and-pruning rounds.

    ``unit``: L2-normalised features of every token; ``residual``: candidate indices in
    descending-saliency order. Each round drops up to ``step`` even-position candidates,
    those most similar to an odd-position one.

    The candidates' cosine similarities are computed once, as one matrix product; each
    round reads its ``a × b`` block (the official code multiplies the block again every
    round: at N = 576, b = 128, 56 rounds over 896-wide tokens, 46 ms on 2 CPU cores; now 17 ms,
    the same kept sets on 20 random draws).

    >>> unit = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]]), dim=-1)
    >>> remove_duplicates(unit, torch.tensor([0, 1, 2, 3]), 2, 8).tolist()
    [1, 3]
    """
    features = unit[residual]
    similarity = features @ features.T
    local = torch.arange(residual.numel(), device=residual.device)  # positions in ``residual``
    while count > 0:
        drop = min(step, int(local.numel()) - count)
        if drop <= 0:
            break
        a, b = local[0::2], local[1::2]
        duplicate = similarity[a[:, None], b[None, :]].max(dim=1).values
        order = torch.sort(duplicate, descending=True, stable=True).indices
        local = torch.cat([a[order[drop:]], b])
    return residual[local]


class VisPruner(Strategy):
    """Important tokens by saliency plus diverse tokens by similarity-based de-duplication, before the LLM.

    >>> ctx = StageContext.for_testing(num_visual=64, budget=16)
    >>> sel = VisPruner().select(ctx)
    >>> sel.count, bool(set(torch.topk(ctx.saliency, 8).indices.tolist()) <= set(sel.keep.tolist()))
    (16, True)
    """

    name = "vispruner"
    description = "Important tokens by [CLS] attention + diverse tokens by similarity de-duplication (VisPruner, ICCV 2025)."
    defaults = {"important_ratio": 0.5, "prune_step": 8}
    budget_convention = "tokens"
    default_keep = 128 / 576
    position_policy = "contiguous"

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        ratio = float(self.params["important_ratio"])
        if not 0.0 <= ratio <= 1.0:
            raise UsageError(f"strategy 'vispruner': important_ratio must be in [0, 1], got {self.params['important_ratio']}")
        step = self.params["prune_step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise UsageError(f"strategy 'vispruner': prune_step must be an integer >= 1, got {step!r}")
        self.params["important_ratio"] = ratio

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision("saliency"),)

    def select(self, ctx: StageContext) -> Selection:
        # several segments (LLaVA-NeXT's base view and crops, tiles, frames): each on its own with
        # its share of the budget, as the official code selects per vision-tower pass (module docstring)
        return select_per_segment(ctx, self._select_one)

    def _select_one(self, ctx: StageContext) -> Selection:
        saliency = ctx.require("saliency")
        n = ctx.num_tokens
        dev = ctx.tokens.device
        if ctx.budget >= n:
            return Selection(keep=torch.arange(n, device=dev), scores=saliency)
        important = int(ctx.budget * float(self.params["important_ratio"]))
        diverse = ctx.budget - important
        order = descending_order(saliency).to(dev)
        chosen = order[:important]
        if diverse > 0:
            unit = F.normalize(ctx.tokens.float(), dim=-1)
            chosen = torch.cat([chosen, remove_duplicates(unit, order[important:], diverse, int(self.params["prune_step"]))])
        return Selection(keep=chosen.sort().values, scores=saliency)
