"""``divprune``: the most diverse ``b`` visual tokens, by greedy max–min cosine distance, before the LLM.

DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models", CVPR 2025, arXiv 2503.02175). Pinned to the official code,
repository vbdi/divprune at commit ``799e2d950aa01ba7860907f5a6d86061f885dca6`` (the
repository has no tags); all rules are in ``LLaVA/llava/model/llava_arch.py``:

- lines 147–150: cosine similarity of the visual tokens (each row divided by its norm,
  then ``X·Xᵀ``); line 155: the distance is ``1 − similarity``;
- line 153: the count is ``int(round(ratio · N))`` with ``ratio = SUBSET_RATIO``;
- lines 164–165: the first token is the one whose *second-smallest* distance in its
  column is largest — the column minimum is the token's distance to itself (0), so this
  is the token farthest from its nearest neighbour, the most isolated one;
- lines 166–169: every later token maximises its minimum distance to the tokens already
  chosen (``argmax`` of the column-wise minimum over the chosen rows);
- lines 365–381: the rule runs once, at ``LAYER_INDEX=0`` (before the language model), on
  ``new_input_embeds[0][35:35 + N]`` — the projected visual tokens (after the
  ``mm_projector``) as they enter the LM; the chosen indices are sorted (line 379), so
  the survivors keep their original order.

Algorithm (as tokenbench runs it; N visual tokens, budget b):

1. At the vision stage, ``D = 1 − cos(tᵢ, tⱼ)`` over the projected visual tokens
   (``ctx.tokens``), computed in float32.
2. First pick: ``argmaxᵢ`` of the second-smallest entry of column ``i`` of ``D``.
3. Then, ``b − 1`` times: ``argmax`` over the tokens not yet chosen of their minimum
   distance to the chosen set (kept up to date incrementally — the same values as the
   official code's recomputed minimum, in O(N) per step instead of O(N·i)).
4. Ties (in 2 and 3) go to the lower index, as ``torch.argmax`` does. The kept indices
   are returned in ascending order. No attention, no text, no saliency is used.

Parameters: none. With no budget the adapter passes ``b = round(0.098 × N)``
(``default_keep = 0.098``, the released ``SUBSET_RATIO``: ``run_Divprune.sh`` line 11,
README "The default retained ratio is set to 0.098"; 56 of LLaVA-1.5's 576 tokens).

Budget convention: ``"tokens"`` — ``b`` is the number of visual tokens entering the
language model, every layer sees the same ``b``. The release states its operating points
the same way, as the share of visual tokens kept before the LM (README: "retained ratio";
``tflops.py`` lines 66–70 count FLOPs from it).

Position ids (``position_policy = "contiguous"``): the official code drops the pruned
rows from ``inputs_embeds`` and the attention mask (llava_arch.py lines 381–385) and
hands the language model no position ids — ``prepare_inputs_labels_for_multimodal``
returns ``None`` when it was given none (lines 349–350; ``generate`` pops them as ``None``,
``LLaVA/llava/model/language_model/llava_llama.py`` line 112, and calls
``super().generate(position_ids=None, …)``, lines 158–163, from
``lmms_eval/models/llava.py`` lines 452–464), so transformers 4.37 numbers the shortened
sequence ``0 … L′−1``: the text after the image moves ``N − b`` positions down.
tokenbench's adapters currently keep every survivor's original position id; the class
attribute records the official policy for the adapters to apply. Measured on the
embedded reference model (144 visual tokens, the ``shapes`` task, a stratified 300
questions; stock ``generate`` on the pruned ``inputs_embeds``): contiguous positions
give 74.7 % / 77.0 % at 16 / 32 tokens against 88.0 % / 89.3 % with original positions
(unreduced 97.0 %).

Deviations from the official code:

- the visual rows are the adapter's image-token rows of every sample (any batch size,
  left padding); the official code reads sample 0 of the batch at a fixed offset of 35
  system-prompt tokens (lines 366, 374) and runs with ``batch_size 1``;
- the count is the budget ``b`` as tokenbench resolves it (``round(fraction · N)``,
  Python's rounding, as ``int(round(·))`` in line 153) or as given;
- distances are computed in float32; the released runs compute them in the model's
  dtype (float16), which creates more exact ties. Measured on the reference model (as
  above): float16 distances keep identical sets for 238 / 175 of 300 questions at
  16 / 32 tokens (95 % / 93 % of the kept tokens shared) and the same accuracy;
- a token is normalised with a floor on its norm (``F.normalize``): an all-zero token gets
  similarity 0 to every token instead of NaN;
- a chosen token is never chosen again: the official ``argmax`` runs over every token,
  chosen ones included (their minimum distance is their distance to themselves, ≈ 0), so
  it could repeat an index only when every remaining token is within rounding of the
  chosen set (exact duplicates); tokenbench then takes the next unchosen token (lowest
  index) and always returns exactly ``b`` distinct tokens;
- Qwen2.5-VL: the official code is LLaVA only; tokenbench applies the same rule to the
  merged tokens the PatchMerger outputs (the tokens that enter the LM).

Several segments (LLaVA-NeXT's base view and crop grid, tiles, several images, video
frames): the max–min selection runs over all the sample's visual tokens together, as the
official LLaVA-NeXT code does over the packed image (vbdi/divprune@799e2d9,
``LLaVA/llava/model/llava_arch.py`` L152-171, L352-386). Deviation: the official pool
includes the ``image_newline`` tokens (one shared embedding: at most about one
survives); here they are separators and stay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

SUBSET_RATIO = 0.098


def cosine_similarity(x: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` cosine similarity of the rows of ``x`` in float32 (an all-zero row: 0 to everything).

    Shared by ``divprune`` (distance ``1 − similarity``) and ``cdpruner`` (the DPP's similarity).

    >>> cosine_similarity(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])).tolist()
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    xn = F.normalize(x.float(), dim=-1)
    return xn @ xn.T


def max_min_order(distance: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` tokens of the greedy max–min diversity order for a ``[n, n]`` distance matrix.

    First the token farthest from its nearest neighbour, then each time the unchosen token
    farthest from the chosen set; ties to the lower index.

    >>> d = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 3.0], [4.0, 3.0, 0.0]])
    >>> max_min_order(d, 3).tolist()
    [2, 0, 1]
    """
    n = distance.shape[0]
    k = min(k, n)
    order = torch.empty(k, dtype=torch.long, device=distance.device)
    if k == 0:
        return order
    if n == 1:
        order[0] = 0
        return order
    first = int(torch.argmax(distance.kthvalue(2, dim=0).values))
    order[0] = first
    nearest = distance[first].clone()  # each token's minimum distance to the chosen set
    chosen = torch.zeros(n, dtype=torch.bool, device=distance.device)
    chosen[first] = True
    for i in range(1, k):
        j = int(torch.argmax(nearest.masked_fill(chosen, -torch.inf)))
        order[i] = j
        chosen[j] = True
        nearest = torch.minimum(nearest, distance[j])
    return order


class DivPrune(Strategy):
    """Keeps the ``b`` visual tokens of the greedy max–min cosine-diversity subset, before the LLM.

    >>> from tokenbench import StageContext
    >>> ctx = StageContext.for_testing(num_visual=16, budget=4)
    >>> sel = DivPrune().select(ctx)
    >>> sel.keep.numel(), sel.keep.tolist() == sorted(sel.keep.tolist())
    (4, True)
    """

    name = "divprune"
    description = "Greedy max-min cosine diversity of the projected visual tokens (DivPrune, CVPR 2025)."
    budget_convention = "tokens"
    default_keep = SUBSET_RATIO
    position_policy = "contiguous"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    def select(self, ctx: StageContext) -> Selection:
        n = ctx.num_tokens
        b = min(ctx.budget, n)
        if b >= n:
            return Selection(keep=torch.arange(n, device=ctx.tokens.device))
        distance = 1.0 - cosine_similarity(ctx.tokens)
        return Selection(keep=max_min_order(distance, b).sort().values)
