"""``dart``: DART — keep pivot tokens and the visual tokens least duplicated with them, after layer K−1.

DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More", EMNLP 2025, arXiv 2502.11494; official code ZichenWen1/DART).

Sources read. Of the official repository only the README could be read here (commit
0c888673198b0f2784053a5686f95a519ceef209: ``scripts/v1_5/eval/[Benchmark].sh
[Reduction_Ratio] [Max_Num_Trunction]``, e.g. ``textvqa.sh 0.778 128``); its model code
could not be fetched (the first author's own DART code in ZichenWen1/EPIC @b2ed9cd,
``llava/model/language_model/dart/modeling_llama_self.py`` lines 1447–1471 and
1528–1580, agrees with every rule below; see docs/strategies.md). The rules below are
pinned to the LLaVA port in ModelTC/llmc,
commit 05eedff08c58ce5a3a4e2e879133bc922dff6ff5 (``dart.py`` last changed in 7de3a7eb),
``llmc/compression/token_reduction/dart.py`` (lines below) with its config
``configs/sparsification/methods/DART/dart.yml`` lines 19–23, and cross-checked against
unattributed copies of the official ``get_retained_image_token`` and of the evaluation
script's ``configure_DART`` found by exact-string search in the code index, which does
not name their repository (same rule, same defaults: ``--pruned_layer 2 --max_num_trunction 128
--reduction_ratio 0.778 --pivot_image_token 4 --pivot_text_token 4``). Check the
official ``llava/model/language_model/modeling_llama.py`` when it can be read.

The paper (Table 1 caption): "tokens are pruned after the second layer with 8 pivot
tokens. The pivot tokens are selected based on the maximum K-norm."

Official rule (llmc line numbers):

- pruning happens in a pre-hook of decoder layer K (K = ``pruning_loc`` = 2, lines
  172–179): layers ``0 .. K−1`` see every token;
- pivots: the keys of layer K−1 (after RoPE, heads repeated and flattened; lines 61–99,
  163–170, 196–197) — the ``pivot_image_token`` = 4 image tokens and the
  ``pivot_text_token`` = 4 tokens *after* the image (the question and the answer prefix)
  with the largest **L1 norm of the key** (lines 199–215);
- duplication is measured on the output of layer K−1 passed through the model's final
  norm (line 112): each pivot in turn (Python set order) takes ``⌊b / 8⌋`` of the image
  tokens not yet taken, those with the lowest cosine similarity to it (lines 189–193,
  217–235); the text pivots are then removed (line 237). The image kept is the 4 image
  pivots plus 8·⌊b/8⌋ picks: 196, 132, 68 tokens at b = 192, 128, 64;
- positions: ``position_ids = keep_indexs`` (line 132) — the survivors keep their
  **original** position ids (``position_policy = "original"``); the README's Qwen2-VL
  and Qwen2.5-VL integrations were not readable here.

Algorithm as tokenbench runs it (N visual tokens, budget b, stage ``llm@K−1``):

1. image pivots: the ``image_pivots`` visual tokens with the largest L1 norm of layer
   K−1's output hidden state (``ctx.tokens``), ties to the lower index;
2. text pivots: of the text tokens after the image (the text query rows whose causal
   attention to the image is non-zero), the ``text_pivots`` with the largest L1 norm of
   their input embedding (fewer if fewer follow the image);
3. the b − ``image_pivots`` picks are shared as evenly as possible over the pivots (the
   earlier ones take the remainder); image pivots in index order, then text pivots in
   sequence order, each take their share of the remaining visual tokens with the lowest
   cosine similarity to them (ties to the lower index) — the image pivot's vector is its
   hidden state, the text pivot's its input embedding;
4. kept: the image pivots and the picks, exactly b, in original order, from layer K on.

Defaults (the official ones): ``k=2``, ``image_pivots=4``, ``text_pivots=4``;
``default_keep = 128/576`` (reduction ratio 0.778). Ranges: ``k`` in [1, L−1] (refused at
schedule time when the model is shallower), ``image_pivots`` ≥ 1 and at most the budget
(``BudgetError`` at selection), ``text_pivots`` ≥ 0 (0: image pivots only). K is an
absolute layer, as in the official code for every model; it is not scaled with depth.
Budget convention: ``"tokens"`` — b visual tokens from layer K on, the paper's "retain b
tokens" (layers before K see all N; the layer-averaged count is recorded next to it).

Deviations from the official code, with the adapter signal that would make each exact:
- image pivots by the L1 norm of layer K−1's *output hidden state*, not of its keys
  (needs: layer K−1's post-RoPE keys for every sequence entry at stage ``llm@K−1``);
- text pivots chosen by, and compared through, their *input embeddings*
  (``text_embeddings``) instead of their layer-K−1 keys and normalised layer-K−1 hidden
  states (needs: the layer's output hidden states of the text tokens, plus the keys above);
- cosine similarity on the raw hidden states, not after the final RMSNorm (its weight
  rescales dimensions; needs: the final norm's weight or the normed states);
  measured effect of the three on the 32-layer tiny LLaVA (576 tokens, random O(1)
  weights, non-uniform norm weights, b = 128, two samples): 44–47 % of the kept tokens
  are the official rule's (chance: 23 %); with the keys and text hidden states available
  but raw states it would be 90–95 %, so the final norm matters least; on a random model
  these figures only say that the proxies are not the method — measure on the real
  checkpoint before comparing with the paper;
- exactly b tokens are kept: the picks are b − ``image_pivots`` shared over the pivots,
  where the official code keeps ``image_pivots`` + P·⌊b/P⌋ (132 at b = 128);
- pivots choose in a fixed order (image, then text, each by position) instead of
  CPython's set order of sequence indices; ties break to the lower index;
- any batch size with left padding works; the official code assumes a batch of one with
  the image at a fixed ``image_token_start_index`` (35) and length (576).

Several segments (LLaVA-NeXT's base view and crop grid, tiles, several images, video
frames): pivots and duplication are computed over all the sample's visual tokens
together, as the official LLaVA-NeXT code does over the whole packed image (upstream
commit 5a19452, read in the fork xqy1111111/DART: ``modeling_llama_self.py`` L344-449).
Deviations: the official LLaVA-NeXT pool includes the ``image_newline`` tokens (here
separators, kept), and on Qwen2-VL/Qwen2.5-VL the official code prunes only a sample's
first image (``lmms-eval`` ``qwen2_vl.py`` L304-310); here every image and frame.
"""

from __future__ import annotations

import torch

from tokenbench.errors import BudgetError, PluginError, UsageError
from tokenbench.strategies.attention_only import top_k_sorted
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

#: the official default: reduction_ratio 0.778 / max_num_trunction 128 of LLaVA-1.5's 576 tokens
DEFAULT_KEEP = 128 / 576


def text_after_image(attention: torch.Tensor) -> torch.Tensor:
    """Boolean mask over the text query rows that come after the image (their causal attention to it is non-zero).

    >>> text_after_image(torch.tensor([[0.0, 0.0], [0.2, 0.1], [0.5, 0.0]])).tolist()
    [False, True, True]
    """
    return attention.float().sum(dim=1) > 0


def pivot_quotas(picks: int, pivots: int) -> list[int]:
    """Split ``picks`` tokens over ``pivots`` pivots as evenly as possible, the earlier pivots taking the remainder.

    >>> pivot_quotas(124, 8)
    [16, 16, 16, 16, 15, 15, 15, 15]
    """
    q, extra = divmod(picks, pivots)
    return [q + 1 if i < extra else q for i in range(pivots)]


def least_duplicated(states: torch.Tensor, pivot_vectors: torch.Tensor, quotas: list[int], pool: torch.Tensor) -> torch.Tensor:
    """Greedy DART selection: each pivot in turn takes its quota of pool tokens with the lowest cosine similarity to it.

    ``states`` [n, d] are the candidates, ``pivot_vectors`` [P, d] the pivots (in the
    order they choose), ``pool`` a boolean mask of the candidates still available. A pick
    leaves the pool; ties go to the lower index. Returns the picked indices, in pick order.

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [0.9, 0.1]])
    >>> least_duplicated(x, torch.tensor([[1.0, 0.0]]), [2], torch.tensor([False, True, True, True])).tolist()
    [2, 1]
    """
    pool = pool.clone()
    unit = torch.nn.functional.normalize(states.float(), dim=-1)
    picked: list[torch.Tensor] = []
    for vec, quota in zip(pivot_vectors, quotas):
        sim = unit @ torch.nn.functional.normalize(vec.float(), dim=0)
        sim = sim.masked_fill(~pool, float("inf"))
        take = torch.sort(sim, stable=True).indices[: min(quota, int(pool.sum()))]
        pool[take] = False
        picked.append(take)
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long, device=states.device)


class DART(Strategy):
    """Pivots by norm, then the tokens least similar to each pivot, from layer K on.

    >>> s = DART()
    >>> s.schedule(ModelInfo(num_layers=32, hidden_size=4096))[0].label
    'llm@1'
    """

    name = "dart"
    description = "Pivot tokens plus the tokens least duplicated with them, after layer K-1 (DART, EMNLP 2025)."
    defaults = {"k": 2, "image_pivots": 4, "text_pivots": 4}
    budget_convention = "tokens"
    default_keep = DEFAULT_KEEP
    position_policy = "original"

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        for key, low in (("k", 1), ("image_pivots", 1), ("text_pivots", 0)):
            value = self.params[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"strategy 'dart': parameter {key}={value!r} must be an integer >= {low}")

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        k = int(self.params["k"])
        if k > model.num_layers - 1:
            raise UsageError(f"strategy 'dart': parameter k={k} must be in [1, {model.num_layers - 1}] for a {model.num_layers}-layer model")
        if self.params["text_pivots"]:
            return (StageSpec.llm(k - 1, "attention", "text_embeddings", query="text"),)
        return (StageSpec.llm(k - 1),)

    def select(self, ctx: StageContext) -> Selection:
        n = ctx.num_tokens
        b = min(ctx.budget, n)
        n_img = int(self.params["image_pivots"])
        if n_img > b:
            raise BudgetError(f"strategy 'dart': parameter image_pivots={n_img} must be in [1, {b}] at budget {b} (the pivots are kept)")
        states = ctx.tokens.float()
        norms = states.abs().sum(dim=-1)
        image_pivots = top_k_sorted(norms, n_img)
        vectors = [states[image_pivots]]
        if self.params["text_pivots"]:
            text = ctx.require("text_embeddings").float().to(states.device)
            att = ctx.require("attention")
            if att.shape[0] != text.shape[0]:
                raise PluginError(f"{ctx.stage.label}: {att.shape[0]} text attention rows but {text.shape[0]} text embeddings")
            after = text_after_image(att).to(text.device)
            candidates = text[after]
            chosen = top_k_sorted(candidates.abs().sum(dim=-1), min(int(self.params["text_pivots"]), int(candidates.shape[0])))
            vectors.append(candidates[chosen])
        pivots = torch.cat(vectors)
        pool = torch.ones(n, dtype=torch.bool, device=states.device)
        pool[image_pivots] = False
        picks = least_duplicated(states, pivots, pivot_quotas(b - n_img, int(pivots.shape[0])), pool)
        keep = torch.cat([image_pivots, picks]).sort().values
        return Selection(keep=keep, scores=norms)
