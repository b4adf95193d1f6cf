"""``pdrop``: PyramidDrop — drop visual tokens at the end of each stage, ranked by the last instruction token.

PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models
via Pyramid Visual Redundancy Reduction", CVPR 2025, arXiv 2410.17247; the CVPR version
is titled "Conical Visual Concentration for Efficient Large Vision-Language Models").
Official code: Cooperx521/PyramidDrop, read at commit
6444f304aee4b7edcb022839fb9e8cd07859704a (2025-03-06). Line numbers are of
``llava/model/modeling_llama_pdrop.py`` unless another file is named.

Official rules (what the code does):

- stages: ``--layer_list '[8,16,24]' --image_token_ratio_list "[0.5,0.25,0.125]"`` in
  every evaluation script (``scripts/v1_5/pdrop_eval/textvqa.sh`` lines 9–10, for
  LLaVA-1.5-13B as for 7B); ``llava/eval/model_vqa_loader.py`` lines 94–96 prepend 1.0.
  So λ = 0.5 per stage, four stages;
- after decoder layer ``rank_layer − 1`` (lines 1222–1223, ``rank_layer = layer_idx + 1``)
  the query/key projections of layer ``rank_layer`` are applied to that output after
  ``rank_layer``'s input norm, with RoPE (lines 1322–1342), and the drop happens *before*
  layer ``rank_layer`` runs: layers ``0 .. l₁−1`` see all N tokens;
- one query row, the last instruction token (``prompt_len + image_tokens − 1``, lines
  1390–1392); softmax over the whole causal row, mean over heads, the image columns
  (lines 1395–1401); the top ``int(N · ratio[s+1])`` of the image tokens present are kept
  in original order (lines 1306–1307, 1405–1407);
- positions: after every drop the sequence is re-padded with position ids ``0 .. len−1``
  (line 1446), and while decoding the position ids are shifted down by the number dropped
  at each stage boundary (lines 1260–1268): **contiguous** positions from the first layer
  after a drop on (``position_policy = "contiguous"``); layers before a drop keep the
  positions they ran with;
- budgets: the paper counts "the average image tokens across all LLM layers" (Table 5;
  270 for λ = 0.5) and reports 192/128/64 "average" tokens in Table 2 without the layer
  lists used. 8/16/24 cannot go below 144 of 576 (repository issue #10); the maintainer's
  answer (issue #29, 2025-11-11) is to keep the λ, λ², λ³ structure, move the stages
  earlier — "λ = 0.19, layer_list = 2, 8, 16" — and solve the average for λ.

Algorithm as tokenbench runs it (N visual tokens, L decoder layers, budget b):

1. Two layouts on the 32-layer scale, ``layers`` (8/16/24) and ``low_layers`` (2/8/16, the
   maintainer's), each scaled to depth by ``round_half_up(l·L/32)``, made strictly
   increasing and clamped to [1, L−2]; stage ends that collide collapse into one, which
   takes the later (smaller) count. Stages are scaled because the paper spreads them
   evenly over the depth (the official scripts keep 8/16/24 also for the 40-layer 13B
   model, where tokenbench uses 10/20/30). Both layouts are scheduled (the budget, known
   per sample, picks one); a stage outside the chosen layout keeps every token.
2. **Budget convention: ``"layer_average"``, the paper's.** Counts ``k_s = N·λ^s`` (s = 1,
   2, 3), with λ the value that makes the authors' average — layers before the first
   stage count N, stage layer ``l_s`` and the layers up to the next stage count ``k_s`` —
   equal b (bisection on the unrounded counts, clamped to [1, N]); then rounded half-up
   and non-increasing, so the average is b within 0.5 token. ``layers`` is used unless
   even counts of 1 after its stages average above b; then ``low_layers``; if those cannot
   reach b either, every count is 1. Examples at N = 576, L = 32: b = 270 (the default,
   ``default_keep = 270/576``) gives λ = 0.5 and 288/144/72, the official operating point;
   b = 192 → λ = 0.253, 146/37/9 on 8/16/24; b = 128 → λ = 0.420, 242/101/43 and b = 64 →
   λ = 0.192, 110/21/4 on 2/8/16.
3. At stage ``llm@l`` the adapter gives layer ``l``'s head-averaged attention from the last
   prompt token (``query="last"``), computed on layer ``l``'s input — the official ranking
   signal; the top ``k_s`` visual tokens present are kept (ties to the lower index).

Parameters: ``layers`` (default ``8/16/24``) and ``low_layers`` (default ``2/8/16``), on
the 32-layer scale, strictly increasing, each in [1, 30]; e.g. ``pdrop:layers=4/12/20``.
λ is not a parameter: it follows from the budget (λ = 0.5 at the default budget).

Deviations from the official code:
- layer ``l_s`` runs on the tokens that entered it and the drop follows it (the official
  code drops before layer ``l_s``, ranking with that layer's q/k on its input — the signal
  tokenbench offers at ``llm@l``). The measured per-layer counts therefore show one more
  layer at each previous count than the authors' average (at b = 270 on 576 tokens and
  32 layers: (9·576 + 8·288 + 8·144 + 7·72)/32 = 285.75 measured, 270 by the authors'
  convention). Measured effect on the 32-layer tiny LLaVA (576 tokens, O(1) random
  weights, two samples, b = 270 and 192): the first stage keeps exactly the official
  placement's tokens (same signal, same inputs); the second and third keep 94.6–100 % of
  them. Exact with an adapter signal "the attention of layer l+1 computed on layer l's
  output" at stage ``llm@l`` (a next-layer attention), which would let the stage sit at
  ``llm@(l−1)``;
- positions: ``position_policy = "contiguous"``, applied by the adapter: after a drop the
  survivors are renumbered for the later layers, as the official code does
  (``pdrop:positions=original`` keeps their ids);
- λ and the stage layout come from the budget (the official code takes both as given);
  stage layers scale with depth;
- ties break to the lower index (``torch.topk`` leaves them unspecified); any batch size
  with left padding works (the official inference raises on left padding);
- attention is recomputed for the last row from the layer's inputs with the model's
  kernel left on (the official code computes the same softmax(q·kᵀ/√d) by hand).

Several segments (LLaVA-NeXT's base view and crop grid, tiles, several images, video
frames): every stage ranks all the sample's visual tokens together, as the official
LLaVA-NeXT code ranks the whole packed image (Cooperx521/PyramidDrop@6444f30,
``llava_arch.py`` L474, ``modeling_llama_pdrop.py`` L1390-1407). Deviation: the official
span includes the ``image_newline`` tokens, which it may prune; here they are separators
and stay.
"""

from __future__ import annotations

from typing import Any

from tokenbench.errors import UsageError
from tokenbench.strategies.attention_only import top_k_sorted
from tokenbench.strategies.depth import round_half_up, scale_layers
from tokenbench.strategies.sparsevlm import layer_average
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

REF_DEPTH = 32
REF_LAYERS = (8, 16, 24)
#: the maintainer's layout for budgets the default stages cannot reach (Cooperx521/PyramidDrop issue #29)
LOW_LAYERS = (2, 8, 16)
#: the official operating point: λ = 0.5 on (8, 16, 24) of 32 layers averages 270 of 576 tokens
DEFAULT_KEEP = 270 / 576
_STATE = "pdrop"


def stage_layers(num_layers: int, layers: tuple[int, ...] = REF_LAYERS) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stage layers for a depth, and each one's exponent (the number of the last reference stage it holds).

    >>> stage_layers(32)
    ((8, 16, 24), (1, 2, 3))
    >>> stage_layers(40)
    ((10, 20, 30), (1, 2, 3))
    >>> stage_layers(4)
    ((1, 2), (1, 3))
    """
    if num_layers - 2 < 1:
        raise UsageError(f"strategy 'pdrop' needs at least 3 decoder layers (a stage after layer 1 and a layer after it), got {num_layers}")
    out, source = scale_layers(layers, REF_DEPTH, num_layers, lowest=1)
    return out, tuple(i + 1 for i in source)


def keep_plan(
    num_visual: int, budget: int, num_layers: int, layers: tuple[int, ...] = REF_LAYERS, low_layers: tuple[int, ...] = LOW_LAYERS
) -> tuple[tuple[int, ...], tuple[int, ...], float]:
    """Stage layers, the visual tokens kept after each, and λ, for N tokens, budget b (a layer average), L layers.

    ``layers`` are used unless even counts of 1 after each of their stages average more
    than b; then ``low_layers`` (the maintainer's low-budget layout) are.

    >>> keep_plan(576, 270, 32)
    ((8, 16, 24), (288, 144, 72), 0.5)
    >>> layers, counts, lam = keep_plan(576, 64, 32)
    >>> layers, counts, round(lam, 2), abs(layer_average(576, 32, layers, counts) - 64) <= 0.5
    ((2, 8, 16), (110, 21, 4), 0.19, True)
    """
    stages, exps = stage_layers(num_layers, layers)
    floor = layer_average(num_visual, num_layers, stages, tuple(1.0 for _ in stages))
    if floor > budget:
        stages, exps = stage_layers(num_layers, low_layers)

    def counts_at(lam: float) -> tuple[float, ...]:
        return tuple(min(max(num_visual * lam**e, 1.0), float(num_visual)) for e in exps)

    def avg(lam: float) -> float:
        return layer_average(num_visual, num_layers, stages, counts_at(lam))

    if avg(0.0) >= budget:
        lam = 0.0
    elif avg(1.0) <= budget:
        lam = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(100):
            mid = (lo + hi) / 2
            if avg(mid) < budget:
                lo = mid
            else:
                hi = mid
        lam = round((lo + hi) / 2, 12)  # so that the official λ = 0.5 comes out as 0.5, not 0.49999…
    counts: list[int] = []
    for c in counts_at(lam):
        k = min(max(round_half_up(c), 1), num_visual)
        counts.append(min(k, counts[-1]) if counts else k)
    return stages, tuple(counts), lam


def _check_layers(key: str, value: Any) -> tuple[int, ...]:
    layers = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in layers)
    if not (layers and integers and all(1 <= v <= REF_DEPTH - 2 for v in layers) and all(a < b for a, b in zip(layers, layers[1:]))):
        shown = "/".join(map(str, layers))
        raise UsageError(f"strategy 'pdrop': parameter {key}={shown} must be strictly increasing layers, each in [1, {REF_DEPTH - 2}] (32-layer scale)")
    return layers


class PyramidDrop(Strategy):
    """Last-token attention drops at the ends of stages (8, 16, 24)·L/32, λ from the layer-averaged budget.

    >>> s = PyramidDrop()
    >>> [st.label for st in s.schedule(ModelInfo(num_layers=32, hidden_size=4096))]
    ['llm@2', 'llm@8', 'llm@16', 'llm@24']
    """

    name = "pdrop"
    description = "Last-token attention drops at the ends of 4 stages, layer-averaged budget (PyramidDrop, CVPR 2025)."
    defaults = {"layers": REF_LAYERS, "low_layers": LOW_LAYERS}
    budget_convention = "layer_average"
    default_keep = DEFAULT_KEEP
    position_policy = "contiguous"

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        for key in ("layers", "low_layers"):
            self.params[key] = _check_layers(key, self.params[key])

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        # both layouts are scheduled (the budget, known per sample, picks one); a stage outside the plan keeps everything
        high, _ = stage_layers(model.num_layers, self.params["layers"])
        low, _ = stage_layers(model.num_layers, self.params["low_layers"])
        return tuple(StageSpec.llm(layer, "attention", query="last") for layer in sorted(set(high) | set(low)))

    def select(self, ctx: StageContext) -> Selection:
        state = ctx.state.setdefault(_STATE, {})
        if "counts" not in state:
            state["layers"], state["counts"], state["lambda"] = keep_plan(
                ctx.num_visual, ctx.budget, ctx.num_layers, self.params["layers"], self.params["low_layers"]
            )
        scores = ctx.require("attention").float()[-1]
        layer = ctx.stage.after_layer
        k = state["counts"][state["layers"].index(layer)] if layer in state["layers"] else ctx.num_tokens
        return Selection(keep=top_k_sorted(scores, min(k, ctx.num_tokens)), scores=scores)
