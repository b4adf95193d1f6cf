"""``visionzip``: dominant tokens by [CLS] attention, plus contextual tokens merged from the rest.

VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision
Language Models", CVPR 2025, arXiv 2412.04467; official code dvlab-research/VisionZip,
also published as JIA-Lab-research/VisionZip). Read at commit ``3151f6df4fca`` (main,
2025-02-27); the package files ``visionzip/*.py`` there are those of tag ``v0.1.3``
(``d75c0470``), only the README differs.

Where each rule is in the official code (file:line at that commit):

- ``main.py:5-7``: ``visionzip(model, dominant, contextual)`` passes ``dominant − 1`` as
  the number of dominant *patches*: the [CLS] token is one of the ``dominant`` tokens.
- ``utils.py:191`` records the similarity metric at CLIP layer 22 of 24 only
  (``r = [0]*22 + [1] + [0]``), the layer whose output LLaVA-1.5 reads (feature layer
  −2); ``utils.py:89``: the metric is that layer's key vectors, averaged over heads.
- ``clip_encoder.py:43-45``: ``attentions[-2]``, ``hidden_states[-2]`` and the metric of
  ``layers[-2]``, all of that layer.
- ``clip_encoder.py:51-54``: dominant tokens: the [CLS] row of the attention, summed
  over heads, its top ``dominant − 1`` patches, plus [CLS] itself (index 0).
- ``clip_encoder.py:56-62``: the other tokens, in their original order.
- ``clip_encoder.py:64``: their metric, L2-normalised (cosine similarity).
- ``clip_encoder.py:67-69``: targets: with ``R`` remaining tokens and ``c`` contextual
  tokens, ``step = max(1, R // c)``; every ``step``-th remaining token from the first,
  the first ``c`` of them.
- ``clip_encoder.py:71-75``: every other remaining token joins its most similar target
  (``argmax``: ties to the first target).
- ``clip_encoder.py:76-80``: contextual token = the target's hidden state **plus** the
  mean of the hidden states that joined it (the target is not in the mean; a target no
  token joined is itself).
- ``clip_encoder.py:83``: the sequence is [dominant tokens in original order ([CLS]
  first), contextual tokens in target order]; ``llava_arch.py:33`` projects it.
- ``llava_arch.py:232,241``: position ids ``arange(0, len)`` over the shortened sequence,
  and ``llava_arch.py:255-256`` hands ``position_ids=None`` to ``generate`` (the LM numbers
  the positions itself): positions are **contiguous** (``position_policy``).

Algorithm (as tokenbench runs it; N visual tokens, budget b, one vision stage):

1. ``d = ⌊b·s + ½⌋`` dominant tokens and ``c = b − d`` contextual tokens, ``s`` =
   ``dominant_share``. The paper's settings (its Table 8: LLaVA-1.5 and Mini-Gemini
   54+10, 108+20, 162+30 for 64, 128, 192 tokens; Table 9: LLaVA-NeXT 135+25, 270+50,
   540+100; README ``dominant=54, contextual=10``) all have ``d/b = 27/32``, so the
   default ``s = 0.84375`` gives every published split exactly and scales them to other
   budgets. (``main.py``'s default arguments, 191 + 30 = 221 tokens, are no published
   setting.)
2. Dominant: the ``d`` tokens with the highest encoder saliency (the adapter's [CLS]
   attention of the feature layer, head-averaged: the same ranking as the head sum).
3. Contextual: targets and assignment as above, by cosine similarity of the projected
   visual tokens; each contextual token is target + mean of its members.
4. ``Selection``: ``keep`` = the dominant tokens (ascending); ``merged`` = the contextual
   tokens, all placed after the last visual token (``merged_positions = N − 1``), so the
   language model sees the official order. ``b ≥ N`` keeps every token.

Parameters: ``dominant_share`` (float in [0, 1], default 0.84375 = 27/32). With no budget
the adapter passes ``b = round(64/576 · N)`` (``default_keep``, the README's setting).
Budget convention: ``"tokens"``: b is the number of visual tokens entering the language
model, dominant plus contextual, as in the paper ("Retain 64 tokens" = 54 + 10, [CLS]
counted).

Deviations from the official code, and the adapter signal that would remove each:

- [CLS] is not among the visual tokens tokenbench hands a strategy (LLaVA-1.5's
  ``default`` feature selection drops it before the projector), so its dominant slot goes
  to the next patch by saliency: ``d`` patches instead of ``d − 1`` patches plus [CLS].
  Exact with: the feature layer's projected [CLS] token as a vision-stage signal.
- Similarity is the cosine of the projected visual tokens (``ctx.tokens``), not of the
  head-averaged keys of the feature layer (CLIP layer 22 for LLaVA-1.5). Exact with: the
  keys of the feature layer's self-attention, head-averaged, per patch. Measured on tiny
  random LLaVAs (8 random images each; 36 tokens at b = 18 → 15 + 3, 576 tokens at
  b = 64 → 54 + 10): 58 % and 24 % of the merged tokens join the same target as with the
  keys; the contextual tokens then have a mean cosine of 0.94 and 0.95 to the official
  ones (the next deviation included). Random weights reorder similarities
  strongly; a trained model may differ less.
- Contextual tokens are merged after the projector (a GELU MLP, so not linear), not
  before it. Exact with: the pre-projection features of the feature layer and the
  projector (or an adapter hook that merges before projecting). Measured as above with
  the official assignment: mean cosine 0.996 and 0.997 to the official contextual
  tokens, relative L2 error 9 % and 8 %.
- Ties in the saliency ranking go to the lower index (``topk`` leaves them unspecified).
- Positions (``position_policy = "contiguous"``, applied by the adapter): the reduced
  sequence is renumbered from 0 as the official code does; with
  ``visionzip:positions=original`` the dominant tokens keep their ids and the contextual
  tokens take the last visual token's.
- Qwen2.5-VL (not in the official code) has no [CLS]: its saliency is the adapter's
  stand-in (mean attention received in the last full-attention block, per merged token).

Several segments (LLaVA-NeXT's base view and crop grid, InternVL's tiles, several
images, video frames): each segment is selected on its own, with a share of the budget
in proportion to its tokens (:func:`tokenbench.select_per_segment`). VisionZip (dvlab-research/VisionZip@3151f6d, visionzip/clip_encoder.py L42-85, llava_arch.py L42-130) keeps dominant and contextual tokens in every vision-tower pass on LLaVA-NeXT (the base view and each crop); at 672×672
the proportional shares are the official per-pass ones for the base view against the
crops, and within the crop grid tokens compete across crops (the official code gives
each crop the same k). The official code also drops the ``image_newline`` tokens and
skips unpadding; here the model's own input is kept (newlines stay, never pruned).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokenbench.errors import UsageError
from tokenbench.segment_selection import select_per_segment
from tokenbench.strategies.attention_only import descending_order
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

#: dominant share of every published split (54/64, 108/128, 162/192, 135/160, ...)
PUBLISHED_SHARE = 27 / 32


def split_counts(budget: int, dominant_share: float) -> tuple[int, int]:
    """``(dominant, contextual)`` for a budget: ``d = ⌊b·s + ½⌋``, ``c = b − d``.

    >>> [split_counts(b, PUBLISHED_SHARE) for b in (64, 128, 192, 160)]
    [(54, 10), (108, 20), (162, 30), (135, 25)]
    """
    dominant = min(budget, math.floor(budget * dominant_share + 0.5))
    return dominant, budget - dominant


def contextual_tokens(tokens: torch.Tensor, metric: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` contextual tokens ``[count, d]`` made from ``tokens`` (the non-dominant ones, in order).

    Targets are every ``max(1, R // count)``-th row from the first; every other row joins
    the target of highest cosine similarity of ``metric``; a contextual token is its
    target plus the mean of the rows that joined it.

    >>> x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # targets: rows 0 and 2
    >>> contextual_tokens(x, x, 2).tolist()
    [[3.0, 0.0], [0.0, 4.0]]
    """
    rows = tokens.shape[0]
    step = max(1, rows // count)
    is_target = torch.zeros(rows, dtype=torch.bool, device=tokens.device)
    is_target[torch.arange(0, rows, step, device=tokens.device)[:count]] = True
    unit = F.normalize(metric.float(), dim=-1)
    assign = (unit[~is_target] @ unit[is_target].T).argmax(dim=1)
    x = tokens.float()
    sums = torch.zeros(count, x.shape[1], device=x.device).index_add_(0, assign, x[~is_target])
    members = torch.bincount(assign, minlength=count).clamp_min(1)
    return x[is_target] + sums / members[:, None]


class VisionZip(Strategy):
    """Dominant tokens by saliency plus contextual tokens merged by similarity, before the LLM.

    >>> ctx = StageContext.for_testing(num_visual=64, budget=16)
    >>> sel = VisionZip().select(ctx)
    >>> sel.keep.numel(), tuple(sel.merged.shape), sel.merged_positions.tolist()
    (14, (2, 8), [63, 63])
    """

    name = "visionzip"
    description = "Dominant tokens by [CLS] attention + contextual tokens merged by similarity (VisionZip, CVPR 2025)."
    defaults = {"dominant_share": PUBLISHED_SHARE}
    budget_convention = "tokens"
    default_keep = 64 / 576
    position_policy = "contiguous"

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        share = float(self.params["dominant_share"])
        if not 0.0 <= share <= 1.0:
            raise UsageError(f"strategy 'visionzip': dominant_share must be in [0, 1], got {self.params['dominant_share']}")
        self.params["dominant_share"] = share

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
        dominant, contextual = split_counts(ctx.budget, float(self.params["dominant_share"]))
        is_dominant = torch.zeros(n, dtype=torch.bool, device=dev)
        is_dominant[descending_order(saliency)[:dominant].to(dev)] = True
        keep = torch.nonzero(is_dominant).squeeze(1)
        if contextual == 0:
            return Selection(keep=keep, scores=saliency)
        rest = ctx.tokens[~is_dominant]
        merged = contextual_tokens(rest, rest, contextual).to(ctx.tokens.dtype)
        positions = torch.full((contextual,), n - 1, dtype=torch.long, device=dev)
        return Selection(keep=keep, merged=merged, merged_positions=positions, scores=saliency)
