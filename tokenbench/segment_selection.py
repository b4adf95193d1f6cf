"""Running a one-grid selection on every segment of a sample.

A strategy whose rule needs one 2-D grid (pooling, sppruner's neighbourhoods) cannot
read a sample of several segments (an AnyRes base image and its crops, tiles, frames)
as one grid. :func:`select_per_segment` gives it each segment as a context of its own,
the segment's grid and its share of the budget (:func:`tokenbench.split_budget`, in
proportion to the tokens each segment holds), and joins the selections.

>>> import torch
>>> from tokenbench import Selection, Segment, StageContext
>>> ctx = StageContext.for_testing(budget=6, segments=(Segment("base", (2, 2), 0), Segment("crops", (3, 4), 4)))
>>> first = lambda c: Selection(keep=torch.arange(c.budget))  # the first tokens of each grid
>>> select_per_segment(ctx, first).keep.tolist()
[0, 1, 4, 5, 6, 7]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from tokenbench.segments import Segment, split_budget
from tokenbench.strategy import Selection, StageContext, validate_selection


def select_per_segment(ctx: StageContext, select_one: Callable[[StageContext], Selection], budgets: Sequence[int] | None = None) -> Selection:
    """``select_one`` on each segment of ``ctx`` (a context with one segment), joined.

    ``budgets``: each segment's share (default: :func:`~tokenbench.split_budget` of the
    tokens present in each). A segment whose share is 0 is dropped whole. Each segment's
    context has that segment's tokens, signals, grid and ``origin`` counted from the
    segment's first token, and ``state[f"segment {i}"]`` for its own state. With one
    segment this is ``select_one(ctx)`` (with ``budgets[0]`` as its budget, if given).
    """
    if len(ctx.segments) == 1:
        return select_one(ctx if budgets is None else replace(ctx, budget=int(budgets[0])))
    ids = ctx.segment_ids
    members = [torch.nonzero(ids == i).squeeze(1) for i in range(len(ctx.segments))]
    shares = list(budgets) if budgets is not None else split_budget([int(m.numel()) for m in members], ctx.budget)
    if len(shares) != len(members):
        raise ValueError(f"{len(shares)} budgets for {len(members)} segments")
    keep, values, merged, merged_pos, scores = [], [], [], [], torch.zeros(ctx.num_tokens)
    has_values = has_scores = at_end = False
    for i, (seg, idx, share) in enumerate(zip(ctx.segments, members, shares)):
        if share <= 0 or idx.numel() == 0:
            continue
        sub = _segment_context(ctx, i, seg, idx, share)
        sel = validate_selection(select_one(sub), sub)
        keep.append(idx[sel.keep])
        values.append(sel.values if sel.values is not None else ctx.tokens[idx[sel.keep]])
        has_values |= sel.values is not None
        if sel.merged is not None and sel.merged_positions is not None:
            merged.append(sel.merged)
            merged_pos.append(idx[sel.merged_positions])
            at_end |= sel.merged_at_end
        if sel.scores is not None:
            scores[idx] = sel.scores.float().cpu()
            has_scores = True
    return Selection(
        keep=torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long),
        values=torch.cat(values) if has_values else None,
        merged=torch.cat(merged) if merged else None,
        merged_positions=torch.cat(merged_pos) if merged else None,
        scores=scores if has_scores else None,
        merged_at_end=at_end,
    )


def _segment_context(ctx: StageContext, i: int, seg: Segment, idx: torch.Tensor, share: int) -> StageContext:
    own = Segment(seg.kind, seg.grid, 0, seg.source)
    state = ctx.state.setdefault(f"segment {i}", {})
    return replace(
        ctx,
        budget=share,
        num_visual=seg.count,
        grid=seg.grid,
        tokens=ctx.tokens[idx],
        origin=ctx.origin[idx] - seg.start,
        saliency=None if ctx.saliency is None else _renormalised(ctx.saliency[idx]),
        attention=None if ctx.attention is None else ctx.attention[:, idx],
        state=state,
        segments=(own,),
    )


def _renormalised(saliency: torch.Tensor) -> torch.Tensor:
    """A segment's saliency summing to 1, as one image's does."""
    total = saliency.sum()
    return saliency / total if float(total) > 0 else saliency
