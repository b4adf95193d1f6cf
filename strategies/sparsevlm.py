"""``sparsevlm``: text-rater-guided progressive pruning with token recycling.

SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient
Vision-Language Model Inference", ICML 2025, arXiv 2410.04417; released code
Gumpest/SparseVLMs, tag v1.5 = commit b9619e6,
``llava/model/language_model/{modelling_sparse_llama,score,utils}.py``; line numbers below
are of that commit).

Algorithm (as tokenbench runs it; N visual tokens, L decoder layers, budget b):

1. *Raters*, once, from the input embeddings. A vision stage keeps every token and
   stores the projected visual embeddings ``V`` and the text input embeddings. At the
   first language-model stage the text tokens *after* the image are identified (the
   released code uses ``hidden_states[:, text_token_start:]``, i.e. the question and
   the answer prefix, not the system prompt before the image): they are the text query
   rows whose causal attention to the visual tokens is non-zero. With ``T`` their input
   embeddings, ``r = mean_over_visual(softmax_over_text(V·Tᵀ))`` gives one relevance per
   text token; text tokens with ``r > mean(r)`` are the raters (if none, every text token
   after the image rates).
2. Pruning layers (2, 6, 15) for a 32-layer model, scaled by L/32 and rounded half-up;
   then made strictly increasing (a layer that collides with the previous one moves one
   later) and clamped to the last layer that can be followed by another (L−2); layers
   that still collide collapse into one, which takes the *last* (smallest) count mapped
   to it. After each pruning layer ``l`` (stage ``llm@l``) every visual token present
   (recycled ones included) is scored by the raters' head-averaged attention to it,
   averaged over raters, and the top ``k_l`` are kept (ties to the lower index).
3. Keep counts: the released lists for N = 576 (``score.py`` lines 7–9 at tag v1.5):
   b = 192 → (300, 200, 110), 128 → (303, 110, 36), 64 → (66, 30, 17). Two counts of
   them differ by the recycled tokens:

   - the release's own count, the one its code prints (``modelling_sparse_llama.py`` at
     v1.5: ``num_token.append(v_token_num)`` after every layer, line 363, averaged over
     the layers, line 371, with ``v_token_num = pred_score_vis.sum() + cluster_num``
     after a pruning layer, line 311): layers before the first pruning layer count N, a
     pruning layer ``l`` and the layers after it count ``k_l`` plus the recycled tokens
     made there (``⌊(⌊0.3·n_d⌋ + 1)/10⌋ + 1`` of the ``n_d`` dropped, lines 288 and 292;
     ``n_d`` counts earlier recycled tokens present). The released lists average
     192.03, 128.62 and 64.81 tokens (192: (2·576 + 4·309 + 9·204 + 17·113)/32);
     :func:`release_average`;
   - kept tokens only (the release's comment on line 7, "2*576 4*300 10*200 16*110"):
     188.19, 123.94 and 61.72 (:func:`layer_average`).

   For another (N, b, depth): take the list whose fraction (192/576, 128/576, 64/576) is
   nearest to b/N (a tie goes to the larger budget), scale it by N/576, then multiply it
   by the factor ``s`` (found by bisection) that makes the release's count equal b, with
   every count rounded half-up, clamped to [1, N] and made non-increasing; of the two
   sides of the step that crosses b the nearer is taken, so the release's count is b to
   within 0.5 token (if even counts of 1 cannot get down to b, because too many early
   layers see N, every count is 1). The recycled tokens are counted with the strategy's
   ``recycle_ratio`` (none with ``recycle=False``, where the count is the kept-only one).
   At the released operating point itself (N = 576, b ∈ {64, 128, 192}, layers
   (2, 6, 15), i.e. a 32-layer model) the released lists are used verbatim, 0.03–0.81
   token above b by the release's count: reproducing the released code exactly there
   is preferred. ``budget_convention`` is ``"layer_average"``. tokenbench's tables
   ("visual tokens in / layer-avg") report neither: they average the measured counts
   (the adapter's ``tokens_per_layer``, tokens *entering* each layer, so the pruning
   layer itself still counts the tokens present before it; recycled tokens included):
   206.5, 145.4 and 82.25 for the released lists at 576 tokens on 32 layers.
4. *Recycling* (``recycle=True``): of the ``n_d`` tokens dropped at a layer, the
   ``⌊0.3·n_d⌋ + 1`` with the highest scores (the released code's count; ``recycle_ratio``)
   are clustered by density-peak clustering into ``⌊m/10⌋ + 1`` clusters (m recycled
   tokens): distances are Euclidean / √d, the local density is ``exp(−mean d²)`` over the
   k nearest neighbours (k = the cluster count, self included, as released), each token's
   δ is its distance to the nearest token of higher density (the densest gets the largest
   distance), the centres are the tokens with the largest δ·density, and every token joins
   its nearest centre. Each cluster's mean becomes one extra token placed at the position
   (and original position id) of its highest-scoring member. The adapter reports these
   separately (``merged`` per stage).
5. ``adaptive=True``: the paper's rank-based count instead of the lists: at each stage
   ``k = round(adaptive_scale · rank(P) + adaptive_bias · n)`` with ``P`` the raters ×
   visual attention matrix of that layer and ``n`` the tokens present (clamped to [1, n]).
   The paper writes the number of deleted tokens as λ·(n − rank P) (as we read it), which
   is ``adaptive_scale = λ``, ``adaptive_bias = 1 − λ``. In this mode the budget is not
   used; the recorded per-layer counts show what it kept.

Parameters: ``recycle`` (True), ``recycle_ratio`` (0.3), ``adaptive`` (False),
``adaptive_scale`` (1.0), ``adaptive_bias`` (0.0). ``default_keep`` = 192/576.

Deviations from the released code:
- density ties in the clustering are broken deterministically (higher rater score
  first, then lower index) instead of by adding uniform noise of 1e-6; cluster means are
  exact (no +1e-6 in the denominator);
- none in positions by default: as released, the recycled tokens are appended after the
  kept visual tokens and the sequence is renumbered contiguously
  (``position_ids[:, :new_len]``), so all later tokens shift position
  (``position_policy = "contiguous"``). With ``sparsevlm:positions=original`` each
  recycled token instead sits at the place, and keeps the original position id, of its
  highest-scoring member, and every survivor keeps its original id (tokenbench's
  behaviour before the policy existed);
- the top-k keeps ``min(k_l, n)``; the released code keeps ``min(k_l, n − 1)``;
- the rank-based count (5) is not in the released code, which uses the lists;
- v1.5 has no 96-token list. The repository's main branch adds b = 96 → (238, 48, 26)
  (and the SparseVLM+ lists) in commit 9e1f649 ("sparsevlm+", 2025-12-11; merged into
  main by 9e376ce, PR #30, and tagged v2.0 at 72cd202), after the v1.5 tag (b9619e6).
  tokenbench does not use it: 96/576 falls to the nearer of 64 and 128;
- the SparseVLM+ (v2.0) options of the release — attention-gravity correction and
  head selection — are not implemented;
- pruning layers scale with depth (the release uses 2, 6, 15 for every depth), and any
  batch size with left padding works (the release assumes one sample and a 35-token
  system prompt);
- attention is recomputed for the text query rows from the layer's inputs (q·kᵀ,
  softmax, head mean) with the SDPA kernel left on, instead of an eager pass.

Several segments (LLaVA-NeXT's base view and crop grid, tiles, several images, video
frames): the raters and the ranking cover all the sample's visual tokens together;
separators (``image_newline``) stay. The v1.5 release handles one 576-token image (its
AnyRes path fails at ``llava_arch.py`` L504, Gumpest/SparseVLMs@b9619e6); its video
branch ranks all frames in one span, as here.
"""

from __future__ import annotations

import math

import torch

from tokenbench.errors import UsageError
from tokenbench.strategies.attention_only import top_k_sorted
from tokenbench.strategies.depth import round_half_up, scale_layers
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

REF_N = 576
REF_DEPTH = 32
REF_LAYERS = (2, 6, 15)
KEEP_LISTS: dict[int, tuple[int, int, int]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    64: (66, 30, 17),
}
CLUSTER_DIVISOR = 10
RECYCLE_RATIO = 0.3  # the released "Top 30%" (modelling_sparse_llama.py line 288)
_STATE = "sparsevlm"


def pruning_layers(num_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The pruning layers for a depth, and which reference stage (0, 1, 2) each one takes its count from.

    >>> pruning_layers(32)
    ((2, 6, 15), (0, 1, 2))
    >>> pruning_layers(40)
    ((3, 8, 19), (0, 1, 2))
    >>> pruning_layers(3)
    ((0, 1), (0, 2))
    """
    if num_layers < 2:
        raise ValueError(f"sparsevlm needs at least 2 decoder layers, got {num_layers}")
    return scale_layers(REF_LAYERS, REF_DEPTH, num_layers)


def nearest_list(num_visual: int, budget: int) -> int:
    """The reference budget whose fraction of 576 is nearest to ``budget / num_visual`` (ties: larger).

    >>> nearest_list(144, 36), nearest_list(576, 100), nearest_list(576, 160)
    (128, 128, 192)
    """
    frac = budget / num_visual
    return min(KEEP_LISTS, key=lambda ref: (abs(frac - ref / REF_N), -ref))


def layer_average(num_visual: int, num_layers: int, layers: tuple[int, ...], counts: tuple[float, ...]) -> float:
    """Layer-averaged count of the *kept* tokens only (pruning layer ``l`` counts ``k_l``; recycled tokens not counted).

    This is the count of the release's comment (``score.py`` line 7), not the one its
    code prints; see :func:`release_average`.

    >>> layer_average(576, 32, (2, 6, 15), (300, 200, 110))
    188.1875
    """
    total: float = layers[0] * num_visual
    bounds = list(layers[1:]) + [num_layers]
    for start, end, k in zip(layers, bounds, counts):
        total += (end - start) * k
    return total / num_layers


def recycled_count(num_dropped: int, ratio: float = RECYCLE_RATIO) -> int:
    """Recycled (merged) tokens made from ``num_dropped`` dropped ones: ``⌊(⌊ratio·n_d⌋ + 1)/10⌋ + 1``.

    As released (``modelling_sparse_llama.py`` lines 288 and 292), with the recycled
    share capped at ``n_d`` (as :func:`recycle` does); 0 when nothing is dropped.

    >>> recycled_count(276), recycled_count(109), recycled_count(94), recycled_count(0)
    (9, 4, 3, 0)
    """
    if num_dropped <= 0:
        return 0
    m = min(num_dropped, int(num_dropped * ratio) + 1)
    return m // CLUSTER_DIVISOR + 1


def release_average(num_visual: int, num_layers: int, layers: tuple[int, ...], counts: tuple[int, ...], recycle_ratio: float | None = RECYCLE_RATIO) -> float:
    """Layer-averaged visual tokens as the release counts them (``num_token``), recycled tokens included.

    The release appends ``v_token_num`` after every layer (``modelling_sparse_llama.py``
    line 363) and prints ``sum(num_token) / num_layers`` (line 371); after a pruning
    layer ``v_token_num = k_l + cluster_num`` (line 311). So the layers before the first
    pruning layer count N, and a pruning layer ``l`` and the layers after it count the
    tokens present after it: ``k_l`` kept plus :func:`recycled_count` of the ``n − k_l``
    dropped, where ``n`` (the tokens present before it) includes earlier recycled tokens.
    As tokenbench runs it, ``k_l`` is capped at ``n`` and nothing is recycled when
    ``k_l ≥ n``; ``recycle_ratio=None``: no recycling (``recycle=False``).

    >>> round(release_average(576, 32, (2, 6, 15), (300, 200, 110)), 4)  # (2·576 + 4·309 + 9·204 + 17·113) / 32
    192.0312
    """
    total = layers[0] * num_visual
    present = num_visual
    bounds = list(layers[1:]) + [num_layers]
    for start, end, k in zip(layers, bounds, counts):
        k = min(int(k), present)
        recycled = recycled_count(present - k, recycle_ratio) if recycle_ratio is not None else 0
        present = k + recycled
        total += (end - start) * present
    return total / num_layers


def keep_counts(num_visual: int, budget: int, num_layers: int, recycle_ratio: float | None = RECYCLE_RATIO) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Pruning layers and the visual tokens kept after each, for N tokens, budget b, L layers.

    Away from the released operating point the list is scaled so that
    :func:`release_average` (recycled tokens included, ``recycle_ratio=None``: none) is b
    within half a token.

    >>> keep_counts(576, 192, 32)
    ((2, 6, 15), (300, 200, 110))
    >>> layers, counts = keep_counts(144, 36, 32)
    >>> abs(release_average(144, 32, layers, counts) - 36) <= 0.5
    True
    """
    layers, source = pruning_layers(num_layers)
    ref = nearest_list(num_visual, budget)
    released = KEEP_LISTS[ref]
    if num_visual == REF_N and budget in KEEP_LISTS and layers == REF_LAYERS:
        return layers, KEEP_LISTS[budget]
    base = [released[i] * num_visual / REF_N for i in source]

    def scaled(s: float) -> tuple[int, ...]:
        counts: list[int] = []
        for c in base:
            k = min(max(round_half_up(s * c), 1), num_visual)
            counts.append(min(k, counts[-1]) if counts else k)
        return tuple(counts)

    def avg(s: float) -> float:
        return release_average(num_visual, num_layers, layers, scaled(s), recycle_ratio)

    # avg is non-decreasing in s (a kept token more never means fewer tokens present)
    lo, hi = 0.0, num_visual / min(base) + 1.0
    if avg(lo) >= budget:
        return layers, scaled(lo)  # every count 1: the early layers alone exceed b
    for _ in range(100):
        mid = (lo + hi) / 2
        if avg(mid) < budget:
            lo = mid
        else:
            hi = mid
    # the nearer of the two sides of the step that crosses b (a tie: the one at or above b)
    best = min((hi, lo), key=lambda s: abs(avg(s) - budget))
    return layers, scaled(best)


def text_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Boolean mask over ``text`` rows: relevance above the mean (the released code's rule).

    relevance = mean over visual tokens of softmax over text tokens of ``visual · textᵀ``.

    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> text_raters(v, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])).tolist()
    [True, False, True]
    """
    rel = (visual.float() @ text.float().T).softmax(dim=1).mean(dim=0)
    raters = rel > rel.mean()
    return raters if bool(raters.any()) else torch.ones_like(raters)


def density_peak_clusters(x: torch.Tensor, num_clusters: int, priority: torch.Tensor) -> torch.Tensor:
    """Cluster label (0 .. c−1) of each row of ``x`` by density-peak clustering over k nearest neighbours.

    As the released ``cluster_and_merge`` (k = ``num_clusters``, self included), with
    density ties broken by ``priority`` (higher first), then the lower index, instead of
    random noise. Cluster ``j`` is centred on the token with the j-th largest δ·density.

    >>> x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]])
    >>> density_peak_clusters(x, 2, torch.zeros(5)).tolist()
    [0, 0, 1, 1, 1]
    """
    m, dim = x.shape
    c = min(num_clusters, m)
    xf = x.float()
    dist = torch.cdist(xf, xf) / math.sqrt(dim)
    knn = dist.topk(k=c, dim=-1, largest=False).values
    density = (-(knn**2).mean(dim=-1)).exp()
    # a strict total order: density desc, then priority desc, then index asc
    order = torch.sort(priority.float(), descending=True, stable=True).indices
    order = order[torch.sort(density[order], descending=True, stable=True).indices]
    rank = torch.empty(m, dtype=torch.long, device=x.device)
    rank[order] = torch.arange(m, device=x.device)
    higher = rank[None, :] < rank[:, None]  # [i, j]: j precedes i
    delta = torch.where(higher, dist, dist.max()).min(dim=-1).values
    centres = torch.sort(delta * density, descending=True, stable=True).indices[:c]
    labels = dist[:, centres].argmin(dim=-1)
    labels[centres] = torch.arange(c, device=x.device)
    return labels


def recycle(tokens: torch.Tensor, scores: torch.Tensor, dropped: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged tokens ``[c, d]`` and their positions (indices into ``tokens``) from the dropped ones."""
    nd = int(dropped.numel())
    m = min(nd, int(nd * ratio) + 1)
    ds = scores[dropped].float()
    top = torch.sort(ds, descending=True, stable=True).indices[:m]
    idx = dropped[top]  # recycled tokens, highest score first
    c = m // CLUSTER_DIVISOR + 1
    labels = density_peak_clusters(tokens[idx], c, scores[idx])
    c = int(labels.max()) + 1
    sums = torch.zeros(c, tokens.shape[1], dtype=torch.float32, device=tokens.device).index_add_(0, labels, tokens[idx].float())
    counts = torch.bincount(labels, minlength=c).clamp_min(1)
    merged = (sums / counts[:, None]).to(tokens.dtype)
    # idx is in descending score order (ties: lower index), so the first member of each label is its best
    by_label = torch.sort(labels, stable=True).indices
    first = torch.ones(m, dtype=torch.bool, device=tokens.device)
    first[1:] = labels[by_label][1:] != labels[by_label][:-1]
    positions = idx[by_label[first]]
    return merged, positions


class SparseVLM(Strategy):
    """Progressive pruning by text-rater attention at layers (2, 6, 15)·L/32, with recycling.

    >>> s = SparseVLM()
    >>> [st.label for st in s.schedule(ModelInfo(num_layers=32, hidden_size=4096))]
    ['vision', 'llm@2', 'llm@6', 'llm@15']
    """

    name = "sparsevlm"
    description = "Text-rater attention pruning at 3 layers with token recycling (SparseVLM, ICML 2025)."
    defaults = {"recycle": True, "recycle_ratio": 0.3, "adaptive": False, "adaptive_scale": 1.0, "adaptive_bias": 0.0}
    budget_convention = "layer_average"
    default_keep = 192 / 576
    position_policy = "contiguous"  # the release renumbers: position_ids[:, :new_len] (module docstring)

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        if not 0.0 <= float(self.params["recycle_ratio"]) <= 1.0:
            raise UsageError(f"sparsevlm: recycle_ratio must be in [0, 1], got {self.params['recycle_ratio']}")

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        layers, _ = pruning_layers(model.num_layers)
        return (StageSpec.vision("text_embeddings"),) + tuple(StageSpec.llm(k, "attention", query="text") for k in layers)

    def select(self, ctx: StageContext) -> Selection:
        state = ctx.state.setdefault(_STATE, {})
        if ctx.stage.kind == "vision":
            state["visual"] = ctx.tokens.detach().float().clone()
            state["text"] = ctx.require("text_embeddings").detach().float().clone()
            return Selection(keep=torch.arange(ctx.num_tokens, device=ctx.tokens.device))
        att = ctx.require("attention").float()
        if "raters" not in state:
            state["raters"] = self._raters(state, att)
        raters = state["raters"]
        scores = att[raters].mean(dim=0)
        n = ctx.num_tokens
        if self.params["adaptive"]:
            rank = int(torch.linalg.matrix_rank(att[raters]))
            k = round_half_up(float(self.params["adaptive_scale"]) * rank + float(self.params["adaptive_bias"]) * n)
        else:
            if "counts" not in state:
                ratio = float(self.params["recycle_ratio"]) if self.params["recycle"] else None
                state["layers"], state["counts"] = keep_counts(ctx.num_visual, ctx.budget, ctx.num_layers, ratio)
            k = state["counts"][state["layers"].index(ctx.stage.after_layer)]
        k = max(1, min(k, n))
        keep = top_k_sorted(scores, k)
        if not self.params["recycle"] or k >= n:
            return Selection(keep=keep, scores=scores)
        dropped_mask = torch.ones(n, dtype=torch.bool, device=scores.device)
        dropped_mask[keep] = False
        dropped = torch.nonzero(dropped_mask).squeeze(1)
        merged, positions = recycle(ctx.tokens, scores, dropped, float(self.params["recycle_ratio"]))
        # the release appends the recycled tokens after the kept ones and renumbers (contiguous)
        return Selection(keep=keep, merged=merged, merged_positions=positions, scores=scores, merged_at_end=self.position_policy == "contiguous")

    @staticmethod
    def _raters(state: dict, att: torch.Tensor) -> torch.Tensor:
        """Rater mask over all text query rows; only rows after the image (non-zero visual attention) rate."""
        text = state.get("text")
        visual = state.get("visual")
        if text is None or visual is None:
            raise RuntimeError("sparsevlm: the vision stage did not run before the first pruning layer")
        if text.shape[0] != att.shape[0]:
            raise RuntimeError(f"sparsevlm: {att.shape[0]} text attention rows but {text.shape[0]} text embeddings")
        after = att.sum(dim=1) > 0
        if not bool(after.any()):
            after = torch.ones_like(after)
        raters = torch.zeros(att.shape[0], dtype=torch.bool, device=att.device)
        raters[torch.nonzero(after).squeeze(1)] = text_raters(visual.to(att.device), text[after.to(text.device)].to(att.device))
        return raters
