"""``fastv``: drop the visual tokens the last prompt token attends to least, after layer K−1.

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024,
arXiv 2403.06764; official code pkunlp-icler/FastV).

Algorithm (as tokenbench runs it):

1. Layers ``0 .. K−1`` see every token. After layer ``K−1`` (stage ``llm@K−1``) the
   adapter computes that layer's attention probabilities from the query rows to the
   visual tokens, averaged over heads.
2. ``query="last"`` (default, the official implementation): the row of the last prompt
   token. ``query="all"``: the mean over *all* query rows, which is what the paper's
   text describes ("the average attention score one token received from all other
   tokens"). The two differ: under the causal mask a visual token receives attention
   only from the rows after it, so the all-rows mean also includes the visual tokens'
   attention to each other and favours early tokens, whereas the last row is the
   prompt's final (answer-producing) position looking at the whole image.
3. The top ``b`` visual tokens by that score are kept (ties to the lower index),
   in original order, with their original position ids; from layer ``K`` on only they
   remain. Text tokens are never dropped.
4. ``K = 0``: there is no earlier layer to rank with, so — as in the official code's
   attention-mask implementation — ``b`` visual tokens are drawn uniformly at random
   (seeded per sample and strategy) before the language model.

Parameters: ``k`` (int, default 2), ``query`` (``"last"`` or ``"all"``, default ``"last"``).
With no budget given the adapter passes ``b = round(0.5 × N)`` (``default_keep = 0.5``,
the paper's default R = 50 % dropped). Budget convention: ``"tokens"`` (``b`` is the
count from layer ``K`` on; layers before ``K`` see all ``N`` — the layer-averaged count
is recorded next to it).

Deviations from the official code:
- the attention signal is recomputed for the requested query rows from layer ``K−1``'s
  inputs (q·kᵀ, softmax), with the model's SDPA kernel left on; the official code runs
  the layer with ``output_attentions=True`` (eager attention). The values are the same
  up to floating-point rounding (pinned by the test suite against eager attention);
- ties between equal scores break towards the lower index (``torch.topk`` leaves them
  unspecified);
- batches of any size with left padding are supported (the official code assumes a
  batch of one and a fixed system-prompt length of 35 tokens, 576 visual tokens);
- the official in-place implementation asserts ``K > 0``; the ``K = 0`` random fallback
  follows its attention-mask implementation, with a seeded generator instead of
  ``random.shuffle``.

Several segments (LLaVA-NeXT's base view and crop grid, tiles, several images, video
frames): all the sample's visual tokens are ranked together; separators
(``image_newline``) stay. The official code ranks one fixed span of LLaVA-1.5's sequence
and has no LLaVA-NeXT, Qwen2-VL or multi-image path (pkunlp-icler/FastV@d165972,
``modeling_llama.py`` L717-790; on LLaVA-NeXT its span would cover the base view only).
"""

from __future__ import annotations

from tokenbench.errors import UsageError
from tokenbench.strategies.attention_only import top_k_sorted
from tokenbench.strategies.random_drop import random_keep
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

_QUERIES = ("last", "all")


class FastV(Strategy):
    """Top-b visual tokens by layer K−1's last-token attention, from layer K on.

    >>> from tokenbench import StageContext, StageSpec
    >>> s = FastV()
    >>> s.schedule(ModelInfo(num_layers=32, hidden_size=4096))
    (StageSpec(kind='llm', after_layer=1, signals=frozenset({'attention'}), query='last'),)
    >>> ctx = StageContext.for_testing(num_visual=16, budget=4, stage=s.schedule(ModelInfo(4, 8))[0], num_text=1)
    >>> sel = s.select(ctx)
    >>> sel.keep.tolist() == ctx.attention[-1].argsort(descending=True, stable=True)[:4].sort().values.tolist()
    True
    """

    name = "fastv"
    description = "Top-b visual tokens by last-token attention after layer K-1 (FastV, ECCV 2024)."
    defaults = {"k": 2, "query": "last"}
    budget_convention = "tokens"
    default_keep = 0.5

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        if self.params["query"] not in _QUERIES:
            raise UsageError(f"fastv: query must be one of {_QUERIES}, not {self.params['query']!r}")
        if int(self.params["k"]) < 0:
            raise UsageError(f"fastv: k must be >= 0, got {self.params['k']}")

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        k = int(self.params["k"])
        if k == 0:
            return (StageSpec.vision(),)
        if k > model.num_layers - 1:
            raise ValueError(f"fastv: k={k} leaves no layer to prune in a {model.num_layers}-layer model (k <= {model.num_layers - 1})")
        return (StageSpec.llm(k - 1, "attention", query=self.params["query"]),)

    def select(self, ctx: StageContext) -> Selection:
        n = ctx.num_tokens
        b = min(ctx.budget, n)
        if ctx.stage.kind == "vision":  # K = 0: the official code's random fallback
            return Selection(keep=random_keep(n, b, ctx.generator))
        att = ctx.require("attention").float()
        scores = att[-1] if ctx.stage.query == "last" else att.mean(dim=0)
        return Selection(keep=top_k_sorted(scores, b), scores=scores)
