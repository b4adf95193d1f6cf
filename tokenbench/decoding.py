"""The forward pass shared by the decoder-only adapters: stages, pruned cache, greedy decode.

The adapter builds a :class:`TokenLayout` (input embeddings with the visual tokens in
place, their original position ids, and which entries are visual) and a
:class:`DecoderParts` view of the stock language model. :func:`prefill_and_decode`
then runs the stock decoder layers one by one, calls the strategy at each scheduled
stage, applies its selection (gathering hidden states and position ids by the
strategy's ``position_policy``, below), and decodes greedily from the per-layer KV
cache: layers before a pruning point cache every token, layers after it only the
survivors. The model's attention kernel is never changed; attention signals are
recomputed for the requested query rows only, from the layer's own projections, so they
are the same under every kernel (``sdpa``, ``eager``, FlashAttention-2), none of which
is asked for attention probabilities.

Position ids after a selection (:attr:`tokenbench.Strategy.position_policy`):

- ``"original"``: every surviving token keeps its id in the unreduced sequence (merged
  tokens take their donor's); decoding continues after the unreduced prompt's largest
  id on every axis (as the stock ``generate`` does: with M-RoPE a video's temporal ids
  may run past the text after it).
- ``"contiguous"``: the reduced sequence is renumbered as if it were the input. With
  1-D RoPE every token after the first takes the previous id + 1. With M-RoPE (3-D ids)
  the visual tokens keep their (temporal, height, width) ids, which say where each
  token is, and the text after them starts at their largest id + 1 on every axis, as
  the stock ``get_rope_index`` numbers text after an image. Decoding continues after
  the reduced prompt's last id. At an LLM stage only the later layers see the new ids;
  the earlier layers' cache keeps the ids it was computed with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tokenbench.attention_masks import decode_mask, prefill_mask
from tokenbench.errors import StrategyFailure
from tokenbench.layer_signals import LayerSignals
from tokenbench.segments import Segment, segment_counts
from tokenbench.strategy import StageContext, StageSpec, Strategy, validate_selection
from tokenbench.timing import current_timer
from tokenbench.token_layout import TokenLayout, rebuild_row, repad

RopeFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ApplyRopeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecoderParts:
    """A model-agnostic view of a stock decoder-only language model."""

    embed: nn.Module
    layers: Sequence[nn.Module]
    norm: nn.Module
    lm_head: nn.Module
    #: (hidden [B,S,d], positions [B,S,P]) -> (cos, sin) in the model's own format
    rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    #: the model's rotary application for one tensor of shape [B,H,S,hd]
    apply_rope: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    #: positions [B,S,P] -> the position_ids the layers take ([B,S] or [P,B,S])
    position_ids: Callable[[torch.Tensor], torch.Tensor]
    make_cache: Callable[[], Any]
    #: 1 for 1-D RoPE, 3 for M-RoPE (temporal, height, width)
    position_dims: int = 1
    #: the layers' attention kernel (``sdpa``, ``eager``, ``flash_attention_2``): the masks follow it (:mod:`tokenbench.attention_masks`)
    attention: str = "sdpa"


@dataclass
class SampleSetup:
    """Per-sample inputs to the strategy, fixed for the whole forward."""

    sample_id: str
    budget: int
    num_visual: int
    grid: tuple[int, int]
    generator: torch.Generator
    saliency: torch.Tensor | None = None  # [N] over original visual tokens
    text_embeddings: torch.Tensor | None = None  # [T, d]
    state: dict[str, Any] = field(default_factory=dict)
    #: the sample's visual segments (empty: one image of ``grid``)
    segments: tuple[Segment, ...] = ()
    #: what the vision encoder ran on (:attr:`tokenbench.TokenCounts.vision_inputs`), for FLOPs
    vision_inputs: tuple[tuple[int, ...], ...] = ()


@dataclass
class DecodeOutput:
    tokens: list[list[int]]
    tokens_per_layer: list[list[int]]
    #: per sample, stage label -> original indices of the unmerged visual tokens kept
    kept: list[dict[str, list[int]]]
    #: per sample, stage label -> merged tokens created at that stage
    merged: list[dict[str, int]]
    first_logits: torch.Tensor
    selection_seconds: list[float]
    #: per sample, stage label -> merged tokens of earlier stages kept (not in ``kept``)
    kept_merged: list[dict[str, int]] = field(default_factory=list)
    #: per sample, stage label -> visual tokens in each segment after that stage (merged ones by their donor's)
    segment_counts: list[dict[str, list[int]]] = field(default_factory=list)


def prefill_and_decode(
    parts: DecoderParts,
    layout: TokenLayout,
    setups: Sequence[SampleSetup],
    strategy: Strategy,
    stages: Sequence[StageSpec],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    stop: Callable[[list[int]], bool] | None = None,
    min_new_tokens: int = 0,
    timer: Any = None,
) -> DecodeOutput:
    """Run the stages, the prefill and greedy decoding; see the module docstring.

    ``min_new_tokens``: generate at least this many tokens, ignoring EOS and ``stop``
    until then (forced tokens, for timing). ``timer``: a
    :class:`tokenbench.timing.PhaseTimer` to mark phase boundaries on (default: the one
    the timed loop activated, if any; it may also force tokens).
    """
    timer = timer if timer is not None else current_timer()
    if timer is not None:
        min_new_tokens = max(min_new_tokens, timer.force_new_tokens)
        timer.mark("prefill_start")
    batch = layout.hidden.shape[0]
    n_layers = len(parts.layers)
    kept: list[dict[str, list[int]]] = [{} for _ in range(batch)]
    merged: list[dict[str, int]] = [{} for _ in range(batch)]
    kept_merged: list[dict[str, int]] = [{} for _ in range(batch)]
    seg_counts: list[dict[str, list[int]]] = [{} for _ in range(batch)]
    sel_time = [0.0] * batch
    by_layer = {s.after_layer: s for s in stages if s.kind == "llm"}
    if any(k is not None and k >= n_layers - 1 for k in by_layer):
        raise ValueError(f"strategy {strategy.name!r} schedules a stage after the last decoder layer ({n_layers - 1})")

    prompt_end = _largest_position(layout)  # the unpruned prompt's; the stock generate continues after it
    for stage in stages:
        if stage.kind == "vision":
            layout = _apply_stage(
                layout, None, stage, strategy, setups, parts, kept, merged, sel_time, n_layers, timer=timer, kept_merged=kept_merged, seg_counts=seg_counts
            )

    cache = parts.make_cache()
    per_layer: list[list[int]] = [[] for _ in range(batch)]
    layer_valid: list[torch.Tensor] = []
    layer_full: list[bool] = []  # no padding at this layer: decoding needs no mask there
    hidden = layout.hidden
    mask, pos_ids, rope = _layer_inputs(parts, layout)
    counts = layout.visual_counts()
    for idx, layer in enumerate(parts.layers):
        for b, c in enumerate(counts):
            per_layer[b].append(int(c))
        layer_in = hidden
        hidden = layer(hidden, attention_mask=mask, position_ids=pos_ids, position_embeddings=rope, cache=cache, use_cache=True)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        layer_valid.append(layout.valid)
        layer_full.append(bool(layout.valid.all()))
        llm_stage = by_layer.get(idx)
        if llm_stage is not None:
            layout.hidden = hidden
            signals = LayerSignals(layer, layer_in, rope, parts.apply_rope, layout.valid, layout.visual, cache=cache, layer_index=idx, text=layout.text)
            layout = _apply_stage(
                layout,
                signals,
                llm_stage,
                strategy,
                setups,
                parts,
                kept,
                merged,
                sel_time,
                n_layers,
                timer=timer,
                kept_merged=kept_merged,
                seg_counts=seg_counts,
            )
            hidden = layout.hidden
            mask, pos_ids, rope = _layer_inputs(parts, layout)
            counts = layout.visual_counts()

    last = parts.norm(hidden[:, -1:, :])
    logits = parts.lm_head(last)[:, -1, :].float()
    first_logits = logits
    if timer is not None:
        timer.mark("first_token")
    if strategy.position_policy == "contiguous":
        prompt_end = _largest_position(layout)  # the reduced prompt is the input
    # every axis continues after the largest id (a video's temporal ids may run past the text after it)
    next_pos = (prompt_end + 1)[:, None].expand(-1, layout.pos.shape[-1])
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1)
        for b in range(batch):
            if not done[b]:
                t = int(token[b])
                if len(out[b]) < min_new_tokens:  # forced: EOS and stop do not end it yet
                    out[b].append(t)
                elif t in eos_ids:
                    done[b] = True
                else:
                    out[b].append(t)
                    if stop is not None and stop(out[b]):
                        done[b] = True
        if all(done) or step == max_new_tokens - 1:
            break
        h = parts.embed(token[:, None])
        pos = next_pos[:, None, :] + step
        rope = parts.rotary(h, pos)
        pos_ids = parts.position_ids(pos)
        for idx, layer in enumerate(parts.layers):
            if not layer_full[idx]:  # a fully valid layer stays so: no mask (and no device sync)
                layer_valid[idx] = torch.cat([layer_valid[idx], torch.ones(batch, 1, dtype=torch.bool, device=layer_valid[idx].device)], dim=1)
            mask = decode_mask(layer_valid[idx], layer_full[idx], parts.attention, h.dtype)
            h = layer(h, attention_mask=mask, position_ids=pos_ids, position_embeddings=rope, cache=cache, use_cache=True)
            if isinstance(h, tuple):
                h = h[0]
        logits = parts.lm_head(parts.norm(h))[:, -1, :].float()
        if timer is not None:
            timer.mark("token")
    return DecodeOutput(out, per_layer, kept, merged, first_logits, sel_time, kept_merged, seg_counts)


def _largest_position(layout: TokenLayout) -> torch.Tensor:
    """``[B]``: each sample's largest position id over its valid tokens and every axis."""
    return layout.pos.masked_fill(~layout.valid[..., None], -1).amax(dim=(1, 2))


def _layer_inputs(parts: DecoderParts, layout: TokenLayout) -> tuple[torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Mask, position ids and rotary tables for the current layout."""
    mask = prefill_mask(layout.valid, parts.attention, layout.hidden.dtype)
    return mask, parts.position_ids(layout.pos), parts.rotary(layout.hidden, layout.pos)


def _apply_stage(
    layout: TokenLayout,
    signals: LayerSignals | None,
    stage: StageSpec,
    strategy: Strategy,
    setups: Sequence[SampleSetup],
    parts: DecoderParts,
    kept: list[dict[str, list[int]]],
    merged: list[dict[str, int]],
    sel_time: list[float],
    n_layers: int,
    timer: Any = None,
    kept_merged: list[dict[str, int]] | None = None,
    seg_counts: list[dict[str, list[int]]] | None = None,
) -> TokenLayout:
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    is_merged = layout.is_merged
    for b, setup in enumerate(setups):
        valid_idx = torch.nonzero(layout.valid[b]).squeeze(1)
        vis = layout.visual[b, valid_idx]
        v_idx = valid_idx[vis]
        tokens = layout.hidden[b, v_idx]
        origin = layout.origin[b, v_idx]
        ctx = StageContext(
            stage=stage,
            sample_id=setup.sample_id,
            budget=setup.budget,
            num_visual=setup.num_visual,
            grid=setup.grid,
            num_layers=n_layers,
            tokens=tokens,
            origin=origin,
            generator=setup.generator,
            saliency=setup.saliency[origin] if "saliency" in stage.signals and setup.saliency is not None else None,
            text_embeddings=setup.text_embeddings if "text_embeddings" in stage.signals else None,
            attention=signals.attention(b, stage.query) if signals is not None and "attention" in stage.signals else None,
            state=setup.state,
            segments=setup.segments,
        )
        if timer is not None:
            timer.mark("selection_start")
        start = time.perf_counter()
        try:
            with torch.no_grad():
                sel = validate_selection(strategy.select(ctx), ctx)
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is recorded per sample
            raise StrategyFailure(b, f"{stage.label}: {type(exc).__name__}: {exc}") from exc
        sel_time[b] += time.perf_counter() - start
        if timer is not None:
            timer.mark("selection_end")
        # a merged token of an earlier stage carries its donor's origin: kept records only
        # the tokens that are still themselves (sorted, unique), and counts the others
        was_merged = is_merged[b, v_idx][sel.keep]
        kept[b][stage.label] = origin[sel.keep][~was_merged].tolist()
        if kept_merged is not None:
            kept_merged[b][stage.label] = int(was_merged.sum())
        merged[b][stage.label] = 0 if sel.merged is None else int(sel.merged.shape[0])
        row = rebuild_row(layout, b, valid_idx, v_idx, sel, strategy.position_policy)
        if seg_counts is not None:
            seg_counts[b][stage.label] = segment_counts(ctx.segments, row[2][row[2] >= 0])
        rows.append(row)
    return repad(rows, layout.hidden.shape[-1], layout.pos.shape[-1], layout.hidden)


# --------------------------------------------------------------------------- stopping


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end generation: the generation config's EOS id(s) and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def make_stop(tokenizer: Any, stop_strings: tuple[str, ...]) -> Callable[[list[int]], bool]:
    """A predicate: has the decoded text of the new tokens produced one of ``stop_strings`` (the task's)?"""

    def stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens[-4:], skip_special_tokens=False)
        return any(s in text for s in stop_strings)

    return stop
