"""``cdpruner``: instruction-conditioned DPP — relevance to the prompt times diversity, greedy MAP, before the LLM.

CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity
for Token Pruning in MLLMs", NeurIPS 2025, arXiv 2506.10967). Pinned to the official code,
repository Theia-4869/CDPruner at commit ``9541616c40fcd5625de1cdb8ea6c33c129eb7864`` (no
tags; the selection code is unchanged since the first commit, ``58190f68`` fixed only
``clip_encoder.py``'s ``image_outputs``). The rules are in ``llava/model/llava_arch.py``
(``encode_images``):

- lines 148–153: similarity ``S = cos`` of the *projected* visual features (after the
  ``mm_projector``, i.e. the tokens that enter the LM), in float32;
- lines 156–158: ``image_embeds`` — the CLIP feature layer's patch states through CLIP's
  ``post_layernorm`` and ``visual_projection`` (``clip_encoder.py`` lines 94–95) — and the
  CLIP text encoder's projected embedding(s) of the instruction (``clip_encoder.py``
  lines 79–89: one embedding per 77-token segment of the question), both normalised;
  their cosine per (visual token, text embedding);
- line 159: the relevance is the *negated* cosine averaged over the text embeddings
  (the maintainer, issue #14: an effect "only observed in CLIP (as used in LLaVA)");
- line 160: min–max normalisation, ``r = (r − min r + 1e-6) / (max r − min r)``;
- line 167: the conditional kernel ``L = diag(r) · S · diag(r)`` (lines 163–166 hold a
  commented-out alternative ``r ← exp(θ/(2(1−θ)) · r)``, not used by the release);
- lines 170–181: greedy MAP inference of the DPP (Chen et al., NeurIPS 2018, the "Fast
  MAP" recurrences): ``d²ᵢ = Lᵢᵢ``; ``T`` times pick ``j = argmax d²``, set
  ``eᵢ = (L[j] − Σₜ cₜ[j] cₜ) / √d²ⱼ``, ``d² −= eᵢ²``, ``d²ⱼ = −∞``;
- line 183: the chosen indices are sorted, so the survivors keep their original order;
  ``T = visual_token_num``, the retained count (``llava_llama.py`` lines 51–52; the eval
  scripts' argument, ``scripts/v1_5/eval/*.sh``).

Algorithm (as tokenbench runs it; N visual tokens, budget b; one vision stage):

1. ``S = cos(vᵢ, vⱼ)`` over the projected visual tokens ``ctx.tokens`` (float32).
2. ``rawᵢ = meanⱼ cos(vᵢ, tⱼ)`` over the prompt's text-token embeddings ``tⱼ``
   (``ctx.text_embeddings``, see the deviations; ``negate=true``: ``−mean``, the
   release's sign); ``r = (raw − min + 1e-6) / (max − min)``.
3. ``L = rᵢ Sᵢⱼ rⱼ``; the greedy MAP recurrences above, ``b`` steps, ties to the lower
   index (``torch.argmax``); ``keep`` = the chosen indices, ascending. ``scores`` = ``r``.

Parameters: ``negate`` (bool, default ``false``; ``true`` is the release's sign, see the
deviations). Default budget ``default_keep = 128/576``: the release has no default
pruning (``--visual_token_num`` defaults to 576, ``llava/eval/model_vqa_loader.py``
line 157); 128 is the README's example.

Budget convention: ``"tokens"`` — ``b`` visual tokens enter the language model and every
layer sees them; the release states its operating points the same way, as the number of
visual tokens retained before the LM (README: "128 visual tokens retained").

Position ids (``position_policy = "contiguous"``): the features are pruned before the
input sequence is assembled (``llava_arch.py`` line 275: ``image_features[index_masks]``),
the shortened sequence gets ``arange`` positions (lines 371, 380) and no position ids are
returned when none were given (lines 394–395; ``llava_llama.py`` lines 120 and 148–153
pass ``None`` to ``generate``), so the text after the image moves ``N − b`` positions
down. tokenbench's adapters currently keep original position ids; the attribute records
the official policy for the adapters to apply. Measured on the embedded reference model
(shapes, 300 questions, stock ``generate`` on the pruned ``inputs_embeds``): contiguous
positions give 73.7 % / 77.3 % at 16 / 32 tokens against 81.0 % / 90.3 % with original
positions.

Deviations from the official code (measurements: the embedded reference model, 144
visual tokens, the ``shapes`` task, a stratified 300 questions, unreduced 97.0 %):

- **relevance signal.** The release embeds the question alone (``model_vqa_loader.py``
  line 110 strips LLaVA's "Answer the question using a single word or phrase.") with
  CLIP's text encoder and compares it with the patch states in CLIP's joint space.
  tokenbench has no CLIP text tower: it uses the closest signal a stage context offers,
  ``text_embeddings`` (the language model's input embeddings of every text token of the
  prompt — chat template, BOS, question and answer prefix), and the projected visual
  tokens ``ctx.tokens`` in the same (LM input) space. The mean over per-token cosines
  mirrors line 159's mean over text embeddings; after the min–max step it equals the
  cosine with the mean of the normalised text-token embeddings. Signals that would make
  it exact: the instruction's CLIP text embedding(s) (``text_tower(...).text_embeds``)
  and the patch states in CLIP's joint space (``visual_projection(post_layernorm(·))`` of
  the feature layer), from the adapter, at the vision stage. Measured effect of the
  template tokens: relevance from the question's tokens only keeps 52 % / 56 % of the
  same tokens at 16 / 32 and scores 81.0 % / 89.3 % (all prompt tokens: 81.0 % / 90.3 %);
- **the sign.** The release negates the cosine (line 159), a correction for CLIP's
  patch–text similarity ("only observed in CLIP", the maintainer, issue #14). With
  tokenbench's substitute signal the negation inverts the relevance: ``negate=true``
  scores 39.7 % / 48.7 % at 16 / 32 tokens (relevant-token recall 16.9 % / 40.8 %,
  random: 36.0 % / 39.3 %), ``negate=false`` 81.0 % / 90.3 % (recall 88.4 % / 95.8 %).
  The default is therefore the plain sign; ``cdpruner:negate=true`` is the literal sign;
- relevance that is constant over the tokens (``max = min``, the release divides by 0 and
  gets ``inf``) is taken as 1 everywhere (a plain DPP on ``S``); an empty prompt likewise;
- a greedy step whose best gain ``d²ⱼ`` is not positive (the kernel's rank is used up: an
  exact duplicate, an all-zero token, more tokens than dimensions) would give ``√0`` or
  ``√(<0)`` and NaN in the release; tokenbench fills the remaining slots with the unchosen
  tokens of highest relevance (ties to the lower index), so exactly ``b`` distinct tokens
  are kept. Tokens are normalised with a floor on the norm (an all-zero token: S = 0);
- the release takes the min and max of the relevance over the whole batch (line 160); its
  evaluation runs one sample per batch (``model_vqa_loader.py`` line 73), tokenbench
  normalises per sample, so a batch changes nothing;
- Qwen2.5-VL: the release is LLaVA only; the authors prune "the remaining tokens after
  the PatchMerger" (issue #4), which is what tokenbench does (the merged tokens are the
  vision-stage tokens). LLaVA-NeXT's per-crop selection (``encode_images`` over the crops
  of one image, lines 202–203) has no counterpart: tokenbench's LLaVA adapter is 1.5.

Several segments (LLaVA-NeXT's base view and crop grid, InternVL's tiles, several
images, video frames): each segment is selected on its own, with a share of the budget
in proportion to its tokens (:func:`tokenbench.select_per_segment`). CDPruner (Theia-4869/CDPruner@9541616, llava/model/llava_arch.py L141-187, L208) selects in every vision-tower pass on LLaVA-NeXT, k = budget / 5 at its fixed 672×672 (its relevance is normalised over all passes together; here per segment); at 672×672
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
from tokenbench.strategies.attention_only import top_k_sorted
from tokenbench.strategies.divprune import cosine_similarity
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

RELEVANCE_EPS = 1e-6  # llava_arch.py line 160


def instruction_relevance(visual: torch.Tensor, text: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """``[n]`` min–max-normalised mean cosine of each visual token to the text rows (lines 159–160 of the release).

    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> [round(x, 4) for x in instruction_relevance(v, torch.tensor([[1.0, 0.0]])).tolist()]
    [1.0, 0.0, 0.7071]
    """
    if text.shape[0] == 0:
        return torch.ones(visual.shape[0], device=visual.device)
    cos = F.normalize(visual.float(), dim=-1) @ F.normalize(text.float().to(visual.device), dim=-1).T
    raw = cos.mean(dim=1)
    if negate:
        raw = -raw
    lo, hi = raw.min(), raw.max()
    if not bool(hi > lo):
        return torch.ones_like(raw)
    return (raw - lo + RELEVANCE_EPS) / (hi - lo)


def dpp_greedy_map(kernel: torch.Tensor, k: int, fallback: torch.Tensor) -> torch.Tensor:
    """The first ``k`` picks of greedy MAP inference for the DPP with ``kernel`` (``[n, n]``, PSD).

    Each step takes the token with the largest marginal gain ``d²`` (the Cholesky
    recurrences of Chen et al. 2018); once no positive gain is left, the unchosen tokens of
    highest ``fallback`` score (ties to the lower index) fill the rest, in index order.

    >>> kernel = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 0.5]])
    >>> dpp_greedy_map(kernel, 2, torch.zeros(3)).tolist()
    [0, 2]
    """
    n = kernel.shape[0]
    k = min(k, n)
    order = torch.empty(k, dtype=torch.long, device=kernel.device)
    c = torch.zeros(k, n, dtype=kernel.dtype, device=kernel.device)
    gain = torch.diagonal(kernel).clone()
    chosen = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    for i in range(k):
        j = int(torch.argmax(gain))
        if not bool(gain[j] > 0):  # rank used up (or NaN): √gain would be 0 or undefined
            order[i:] = top_k_sorted(fallback.float().masked_fill(chosen, -torch.inf), k - i)
            return order
        order[i] = j
        chosen[j] = True
        e = (kernel[j] - c[:i, j] @ c[:i]) / torch.sqrt(gain[j])
        c[i] = e
        gain = gain - e * e
        gain[chosen] = -torch.inf
    return order


class CDPruner(Strategy):
    """Keeps the ``b`` tokens of the greedy MAP of a DPP whose kernel weighs similarity by prompt relevance.

    >>> from tokenbench import StageContext
    >>> ctx = StageContext.for_testing(num_visual=16, budget=4)
    >>> sel = CDPruner().select(ctx)
    >>> sel.keep.numel(), tuple(sel.scores.shape)
    (4, (16,))
    """

    name = "cdpruner"
    description = "Conditional DPP: prompt relevance x token diversity, greedy MAP (CDPruner, NeurIPS 2025)."
    defaults = {"negate": False}
    budget_convention = "tokens"
    default_keep = 128 / 576
    position_policy = "contiguous"

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        if not isinstance(self.params["negate"], bool):
            raise UsageError(f"strategy 'cdpruner': parameter negate must be true or false, got {self.params['negate']!r}")

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision("text_embeddings"),)

    def select(self, ctx: StageContext) -> Selection:
        # several segments (LLaVA-NeXT's base view and crops, tiles, frames): each on its own with
        # its share of the budget, as the official code selects per vision-tower pass (module docstring)
        return select_per_segment(ctx, self._select_one)

    def _select_one(self, ctx: StageContext) -> Selection:
        n = ctx.num_tokens
        b = min(ctx.budget, n)
        relevance = instruction_relevance(ctx.tokens, ctx.require("text_embeddings"), bool(self.params["negate"]))
        if b >= n:
            return Selection(keep=torch.arange(n, device=ctx.tokens.device), scores=relevance)
        kernel = relevance[:, None] * cosine_similarity(ctx.tokens) * relevance[None, :]
        order = dpp_greedy_map(kernel, b, relevance)
        return Selection(keep=order.sort().values, scores=relevance)
