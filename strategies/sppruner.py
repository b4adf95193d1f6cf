"""``sppruner``: focus-then-context, subject-centric visual token reduction — a RECONSTRUCTION.

Source: "Focus-then-Context: Subject-Centric Progressive Visual Token Reduction"
(SPpruner), arXiv 2605.20950. **No code and no full text of that paper are public.
Everything below is tokenbench's reconstruction from the abstract alone**: the
algorithmic details (how the two signals are fused, the seed and region rules, the
ring scan and its quota, the merge weights, where and how much the progressive step
prunes) are our choices, not the authors'. Every part is a switch so that it can be
ablated, and the module is meant to be replaced when the authors' code appears.
Results under this name measure this reconstruction, not the published method. The
abstract claims a 2.53× speed-up on Qwen2.5-VL keeping 22.2 % of the visual tokens and
67 % fewer FLOPs on LLaVA with about 0.6 % accuracy drop.

Stage ``vision`` (signals: encoder saliency, prompt text embeddings), budget b:

1. *Focus score* (``focus``): ``f = alpha · saliency + (1 − alpha) · relevance``, where
   saliency is the encoder saliency normalised to sum 1 (the signal of
   ``attention-only``) and relevance is the softmax over visual tokens of
   ``cos(v_i, t̄) / temperature``, ``t̄`` the mean of the L2-normalised prompt text
   embeddings. *Subjects*: seeds are local maxima of ``f`` on the h × w grid (max-pooling
   NMS in an ``nms_window`` × ``nms_window`` window) that stand out from the uniform level,
   ``f ≥ seed_min / N``, and always the global maximum (a threshold relative to ``max f``
   would let a subject the prompt names suppress a salient one it does not name, which
   the method means to keep); each
   seed grows through 4-neighbours whose focus is ≥ ``grow`` × the seed's; a seed whose
   region contains a stronger seed is the same subject and is dropped; at most
   ``max_subjects`` subjects, strongest first (``multi_subject=False``: only the
   strongest). A cell in several regions belongs to the strongest subject. The focus set
   is the union of the regions, capped at ``⌊focus_share · b⌋`` tokens, filled round-robin
   across subjects (each subject's cells by descending focus), so every subject keeps
   its best cells. ``focus=False``: no subjects; the single highest-focus token anchors
   the scan and everything else is left to step 2.
2. *Context-aware structural scanning* (``context``): every other token gets the
   Chebyshev distance to the nearest subject region (its *ring*) and that subject
   (ties: the stronger subject).
   Ring by ring outward, for each (subject, ring) segment the ``⌈ring_keep · size⌉``
   tokens least similar to what is already kept (lowest maximum cosine similarity to the
   kept tokens; ties: higher focus, then lower index) are kept, in one batch per
   segment; the similarity is recomputed against the grown kept set at each ring. When picks exceed what is left of the budget, they are taken
   round-robin across segments. Passes repeat over the remaining tokens until exactly b
   are kept. ``context=False``: the rest of the budget goes to the highest focus scores.
3. *Merge* (``merge``): each dropped token joins its nearest kept token on the grid
   (Euclidean grid distance; ties to the lower index); each kept token is replaced by
   the focus-weighted mean of itself and the tokens that joined it
   (``Selection.values``), so the focus-weighted sum over all tokens is preserved.
4. *Progressive* (``progressive``, off by default): a second, lighter reduction inside
   the language model after layer ``p − 1``, ``p = max(1, round(L/4))``: the vision stage
   keeps ``b1`` and the layers from ``p`` on keep the ``b2 ≈ progressive_ratio · b1`` with
   the most text-to-visual attention (mean over the text query rows, head-averaged),
   with ``b1``, ``b2`` chosen so that the layer-averaged count ``(p·b1 + (L−p)·b2)/L``
   is as near b as integers allow (exact when some b1 near the ideal makes it divide;
   otherwise off by less than one token). With it on, the budget
   convention is ``"layer_average"`` (set per instance), otherwise ``"tokens"``.

The budget is exact (b tokens after the vision stage, without ``progressive``).
Selection is vectorised: loops run over subjects, region-growing steps and rings only.

Parameters (defaults): ``focus`` (True), ``multi_subject`` (True), ``context`` (True),
``merge`` (True), ``progressive`` (False), ``alpha`` (0.5), ``temperature`` (0.1),
``nms_window`` (3), ``seed_min`` (2.0), ``max_subjects`` (4), ``grow`` (0.5),
``focus_share`` (0.6), ``ring_keep`` (0.5), ``progressive_ratio`` (0.75).
``default_keep`` = 128/576 (the abstract's 22.2 %).

Deviations: there is no published code to deviate from; see the first paragraph.

Several segments (LLaVA-NeXT's base view and crop grid, tiles, several images, video
frames): the subjects, rings and merges need one 2-D grid, so each segment runs on its
own with a share of the vision-stage budget in proportion to its tokens
(:func:`tokenbench.select_per_segment`); the progressive LLM stage ranks the sample as a
whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokenbench.errors import UsageError
from tokenbench.segment_selection import select_per_segment
from tokenbench.segments import split_budget
from tokenbench.strategies.attention_only import top_k_sorted
from tokenbench.strategies.depth import round_half_up
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy


def _order(*keys: torch.Tensor) -> torch.Tensor:
    """Indices sorting ascending by ``keys[0]``, then ``keys[1]``, …, then index."""
    n = keys[0].numel()
    order = torch.arange(n, device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def rank_within(segment: torch.Tensor, *keys: torch.Tensor) -> torch.Tensor:
    """Each element's 0-based rank inside its segment, by ``keys`` ascending (then index).

    >>> rank_within(torch.tensor([1, 0, 1, 0]), torch.tensor([0.5, 0.2, 0.1, 0.3])).tolist()
    [1, 0, 0, 1]
    """
    n = segment.numel()
    if n == 0:
        return segment.clone()
    order = _order(segment, *keys)
    seg = segment[order]
    idx = torch.arange(n, device=segment.device)
    start = torch.ones(n, dtype=torch.bool, device=segment.device)
    start[1:] = seg[1:] != seg[:-1]
    group_start = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=0).values
    rank = torch.empty(n, dtype=torch.long, device=segment.device)
    rank[order] = idx - group_start
    return rank


def _dilate4(mask: torch.Tensor) -> torch.Tensor:
    """4-neighbour dilation of boolean grids ``[S, h, w]``."""
    out = mask.clone()
    out[:, 1:, :] |= mask[:, :-1, :]
    out[:, :-1, :] |= mask[:, 1:, :]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def progressive_split(budget: int, num_visual: int, num_layers: int, ratio: float) -> tuple[int, int, int]:
    """``(p, b1, b2)``: layers ``< p`` keep b1, layers ``≥ p`` keep b2, averaging b over L layers.

    >>> progressive_split(64, 576, 32, 0.75)
    (8, 79, 59)
    >>> progressive_split(9, 36, 4, 0.75)
    (1, 12, 8)
    """
    p = max(1, round_half_up(num_layers / 4))
    if p > num_layers - 1:
        raise ValueError(f"sppruner: progressive needs at least 2 decoder layers, got {num_layers}")
    rest = num_layers - p
    total = budget * num_layers
    ideal = budget * num_layers / (p + rest * ratio)
    best: tuple[float, float, int, int] | None = None
    # b1 near the ideal; the pair whose layer average is nearest b wins (then b1 nearest the ideal)
    for b1 in range(max(budget, min(num_visual, math.floor(ideal)) - rest), min(num_visual, math.ceil(ideal) + rest) + 1):
        b2 = min(max(round_half_up((total - p * b1) / rest), 1), b1)
        key = (abs(p * b1 + rest * b2 - total), abs(b1 - ideal), b1, b2)
        best = key if best is None or key < best else best
    assert best is not None  # the range holds at least min(num_visual, ⌈ideal⌉) ≥ budget
    return p, best[2], best[3]


class SPPruner(Strategy):
    """Subject regions, then diverse context rings, then merging (tokenbench's reconstruction).

    >>> from tokenbench import StageContext
    >>> ctx = StageContext.for_testing(num_visual=64, budget=16, dim=8)
    >>> sel = SPPruner().select(ctx)
    >>> sel.keep.numel(), tuple(sel.values.shape)
    (16, (16, 8))
    """

    name = "sppruner"
    description = "Subject focus + context ring scan + merge (reconstruction of SPpruner, arXiv 2605.20950)."
    defaults = {
        "focus": True,
        "multi_subject": True,
        "context": True,
        "merge": True,
        "progressive": False,
        "alpha": 0.5,
        "temperature": 0.1,
        "nms_window": 3,
        "seed_min": 2.0,
        "max_subjects": 4,
        "grow": 0.5,
        "focus_share": 0.6,
        "ring_keep": 0.5,
        "progressive_ratio": 0.75,
    }
    default_keep = 128 / 576

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        win = int(p["nms_window"])
        if win < 1 or win % 2 == 0:
            raise UsageError(f"sppruner: nms_window must be a positive odd number, got {win}")
        if float(p["seed_min"]) < 0.0:
            raise UsageError(f"sppruner: seed_min must be >= 0, got {p['seed_min']}")
        for key in ("alpha", "grow", "focus_share", "ring_keep", "progressive_ratio"):
            if not 0.0 <= float(p[key]) <= 1.0:
                raise UsageError(f"sppruner: {key} must be in [0, 1], got {p[key]}")
        if float(p["ring_keep"]) <= 0.0 or float(p["progressive_ratio"]) <= 0.0:
            raise UsageError("sppruner: ring_keep and progressive_ratio must be > 0")
        if float(p["temperature"]) <= 0.0:
            raise UsageError(f"sppruner: temperature must be > 0, got {p['temperature']}")
        if int(p["max_subjects"]) < 1:
            raise UsageError(f"sppruner: max_subjects must be >= 1, got {p['max_subjects']}")
        if p["progressive"]:
            self.budget_convention = "layer_average"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        stages: tuple[StageSpec, ...] = (StageSpec.vision("saliency", "text_embeddings"),)
        if self.params["progressive"]:
            p = progressive_split(1, 1, model.num_layers, float(self.params["progressive_ratio"]))[0]
            stages += (StageSpec.llm(p - 1, "attention", query="text"),)
        return stages

    # ------------------------------------------------------------------ selection
    def select(self, ctx: StageContext) -> Selection:
        if ctx.stage.kind == "llm":
            return self._progressive(ctx)
        b = ctx.budget
        if self.params["progressive"]:
            b = progressive_split(ctx.budget, ctx.num_visual, ctx.num_layers, float(self.params["progressive_ratio"]))[1]
        # several segments (AnyRes crops, tiles, frames): each grid on its own, with its share
        return select_per_segment(ctx, self._select_grid, split_budget([s.count for s in ctx.segments], b))

    def _select_grid(self, ctx: StageContext) -> Selection:
        """The vision-stage selection on one grid, keeping ``ctx.budget`` tokens."""
        n = ctx.num_tokens
        h, w = ctx.grid
        if n != h * w:
            raise ValueError(f"sppruner needs the full {h}x{w} grid at the vision stage, got {n} tokens")
        b = min(ctx.budget, n)
        x = ctx.tokens.float()
        xn = F.normalize(x, dim=-1)
        focus = self.focus_score(ctx, xn)
        if b >= n:
            return Selection(keep=torch.arange(n, device=x.device), scores=focus)

        owner = self.subjects(focus, h, w, b)  # [n] subject id, -1 outside the focus set
        kept = owner >= 0
        if int(kept.sum()) < b:
            if self.params["context"]:
                kept = self._scan(owner, xn, focus, h, w, b)
            else:
                rest = torch.where(kept, torch.full_like(focus, -math.inf), focus)
                kept[top_k_sorted(rest, b - int(kept.sum()))] = True
        keep = torch.nonzero(kept).squeeze(1)
        values = self._merge(x, focus, keep, h, w).to(ctx.tokens.dtype) if self.params["merge"] else None
        return Selection(keep=keep, values=values, scores=focus)

    def focus_score(self, ctx: StageContext, xn: torch.Tensor) -> torch.Tensor:
        """Fused focus score per visual token (sums to 1)."""
        n, dev = xn.shape[0], xn.device
        uniform = torch.full((n,), 1.0 / n, device=dev)
        if ctx.saliency is not None and float(ctx.saliency.float().clamp_min(0).sum()) > 0:
            sal = ctx.saliency.to(dev).float().clamp_min(0)
            sal = sal / sal.sum()
        else:
            sal = uniform
        if ctx.text_embeddings is not None and ctx.text_embeddings.shape[0] > 0:
            t = F.normalize(F.normalize(ctx.text_embeddings.to(dev).float(), dim=-1).mean(dim=0), dim=0)
            rel = (xn @ t / float(self.params["temperature"])).softmax(dim=0)
        else:
            rel = uniform
        alpha = float(self.params["alpha"])
        return alpha * sal + (1.0 - alpha) * rel

    def subjects(self, focus: torch.Tensor, h: int, w: int, budget: int) -> torch.Tensor:
        """Subject id of each token in the (capped) focus set, -1 elsewhere."""
        n, dev = h * w, focus.device
        owner = torch.full((n,), -1, dtype=torch.long, device=dev)
        if not self.params["focus"]:
            owner[int(torch.sort(focus, descending=True, stable=True).indices[0])] = 0
            return owner
        grid = focus.view(1, 1, h, w)
        win = int(self.params["nms_window"])
        pooled = F.max_pool2d(grid, win, stride=1, padding=win // 2).view(n)
        # the global maximum always seeds, whatever seed_min says
        is_seed = (focus >= pooled) & ((focus >= float(self.params["seed_min"]) / n) | (focus >= focus.max()))
        cand = torch.nonzero(is_seed).squeeze(1)
        seeds = cand[torch.sort(focus[cand], descending=True, stable=True).indices]
        s = seeds.numel()
        allowed = focus[None, :] >= float(self.params["grow"]) * focus[seeds][:, None]  # [S, n]
        rows = torch.arange(s, device=dev)
        allowed[rows, seeds] = True
        region = torch.zeros(s, n, dtype=torch.bool, device=dev)
        region[rows, seeds] = True
        region = region.view(s, h, w)
        allowed = allowed.view(s, h, w)
        for _ in range(n):  # grows at least one cell per step, so at most n steps
            grown = _dilate4(region) & allowed
            if bool((grown == region).all()):
                break
            region = grown
        region = region.view(s, n)
        # a seed whose region holds a stronger seed is that stronger seed's subject
        contains = region[:, seeds]  # [S, S]: region of i contains seed j
        earlier = torch.ones(s, s, dtype=torch.bool, device=dev).tril(diagonal=-1)
        unique = ~(contains & earlier).any(dim=1)
        region = region[unique]
        limit = int(self.params["max_subjects"]) if self.params["multi_subject"] else 1
        region = region[:limit]
        # each cell belongs to the strongest subject that contains it
        member = region.any(dim=0)
        first = region.float().argmax(dim=0)
        cells = torch.nonzero(member).squeeze(1)
        cap = max(1, min(budget, int(math.floor(float(self.params["focus_share"]) * budget))))
        if cells.numel() > cap:
            subj = first[cells]
            rank = rank_within(subj, -focus[cells])
            pick = _order(rank, -focus[cells])[:cap]
            cells = cells[pick]
        owner[cells] = first[cells]
        return owner

    def _scan(self, owner: torch.Tensor, xn: torch.Tensor, focus: torch.Tensor, h: int, w: int, budget: int) -> torch.Tensor:
        """Ring-by-ring diverse context around each subject until ``budget`` tokens are kept."""
        n, dev = h * w, xn.device
        kept = owner >= 0
        left = budget - int(kept.sum())
        idx = torch.arange(n, device=dev)
        rows, cols = idx // w, idx % w
        members = torch.nonzero(kept).squeeze(1)
        ids, seg_of = torch.unique(owner[members], return_inverse=True)  # subjects that kept cells
        subjects = int(ids.numel())
        cheb = torch.maximum((rows[:, None] - rows[members][None, :]).abs(), (cols[:, None] - cols[members][None, :]).abs())
        dist = torch.full((n, subjects), n, dtype=torch.long, device=dev)
        dist.scatter_reduce_(1, seg_of[None, :].expand(n, -1), cheb, reduce="amin")
        ring, near = dist.min(dim=1)  # ring 0 = the focus set; ties go to the stronger subject
        rings = int(ring.max())
        ring_keep = float(self.params["ring_keep"])
        while left > 0:
            before = left
            for r in range(1, rings + 1):
                cand = torch.nonzero(~kept & (ring == r)).squeeze(1)
                if cand.numel() == 0:
                    continue
                sim = (xn[cand] @ xn[kept].T).max(dim=1).values  # redundancy with what is kept
                seg = near[cand]
                rank = rank_within(seg, sim, -focus[cand])
                size = torch.bincount(seg, minlength=subjects)[seg]
                take = rank < torch.ceil(ring_keep * size.float()).long()
                chosen = cand[take]
                if chosen.numel() > left:  # round-robin across subjects, least redundant first
                    chosen = chosen[_order(rank[take], sim[take], -focus[chosen])[:left]]
                kept[chosen] = True
                left -= int(chosen.numel())
                if left == 0:
                    break
            if left == before:  # cannot happen (b ≤ n), but never loop forever
                break
        return kept

    @staticmethod
    def _merge(x: torch.Tensor, focus: torch.Tensor, keep: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Focus-weighted mean of each kept token and the dropped tokens nearest to it on the grid."""
        idx = torch.arange(h * w, device=x.device)
        coords = torch.stack([idx // w, idx % w], dim=1).float()
        target = torch.cdist(coords, coords[keep]).argmin(dim=1)  # kept tokens map to themselves
        weight = focus.clamp_min(1e-12)
        num = torch.zeros(keep.numel(), x.shape[1], device=x.device).index_add_(0, target, x * weight[:, None])
        den = torch.zeros(keep.numel(), device=x.device).index_add_(0, target, weight)
        return num / den[:, None]

    def _progressive(self, ctx: StageContext) -> Selection:
        _, _, b2 = progressive_split(ctx.budget, ctx.num_visual, ctx.num_layers, float(self.params["progressive_ratio"]))
        scores = ctx.require("attention").float().mean(dim=0)
        return Selection(keep=top_k_sorted(scores, min(b2, ctx.num_tokens)), scores=scores)
