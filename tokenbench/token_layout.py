"""A left-padded batch of token sequences, and how a selection rewrites one of them.

:class:`TokenLayout` holds the prompt embeddings with the visual tokens in place, their
position ids, and which entries are visual (by their original index), text or separators
(tokens a model puts among its visual tokens, such as LLaVA-NeXT's ``image_newline``).
:func:`rebuild_row` applies a :class:`~tokenbench.Selection` to one sample: every text
and separator token stays where it was, the kept visual tokens stay where they were,
merged tokens go after their donors, and the position ids follow the strategy's policy
(:func:`contiguous_positions`); :func:`repad` left-pads the rebuilt rows into a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenbench.strategy import Selection

#: ``TokenLayout.origin`` of a text token
TEXT = -1
#: ``TokenLayout.origin`` of a separator among the visual tokens (never selected, never dropped)
SEPARATOR = -2


@dataclass
class TokenLayout:
    """A left-padded batch of token sequences.

    ``pos`` holds the original position ids (``P`` = 1 for 1-D RoPE, 3 for M-RoPE);
    ``origin`` is the original visual index of each visual entry (a merged token
    carries its donor's), :data:`TEXT` (-1) for text and :data:`SEPARATOR` (-2) for the
    separator tokens a model puts among its visual tokens (``image_newline``), which no
    strategy sees or drops; ``merged`` marks the merged tokens an earlier stage created
    (``None``: none).
    """

    hidden: torch.Tensor  # [B, S, d]
    pos: torch.Tensor  # [B, S, P]
    valid: torch.Tensor  # [B, S] bool
    origin: torch.Tensor  # [B, S] long
    merged: torch.Tensor | None = None  # [B, S] bool

    @property
    def visual(self) -> torch.Tensor:
        return self.origin >= 0

    @property
    def text(self) -> torch.Tensor:
        """Text entries: neither visual nor separators (padding included; and with ``valid``)."""
        return self.origin == TEXT

    @property
    def is_merged(self) -> torch.Tensor:
        return self.merged if self.merged is not None else torch.zeros_like(self.valid)

    def visual_counts(self) -> list[int]:
        return (self.visual & self.valid).sum(dim=1).tolist()


def rebuild_row(
    layout: TokenLayout, b: int, valid_idx: torch.Tensor, v_idx: torch.Tensor, sel: Selection, policy: str = "original"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sample's new sequence: every text and separator token where it was, the kept
    visual tokens where they were, each merged token after its donor (``merged_at_end``:
    after the last kept or donor visual token, in the given order); ids by ``policy``.

    Returns hidden states, position ids, origins and the merged-token flags.
    """
    hid, pos, org, mrg = layout.hidden[b], layout.pos[b], layout.origin[b], layout.is_merged[b]
    other = valid_idx[org[valid_idx] < 0]  # text and separators: never dropped
    kept_at = v_idx[sel.keep]  # sequence index of each kept visual token
    n_merged = 0 if sel.merged is None else int(sel.merged.shape[0])
    slot = n_merged + 2  # sort keys: sequence index x slot, merged tokens in between
    seg_i = [other, kept_at]
    seg_h = [hid[other], sel.values.to(hid.dtype) if sel.values is not None else hid[kept_at]]
    keys = [other * slot, kept_at * slot]
    seg_m = [mrg[other], mrg[kept_at]]
    if n_merged and sel.merged is not None and sel.merged_positions is not None:
        donors = v_idx[sel.merged_positions]
        steps = torch.arange(1, n_merged + 1, device=donors.device)
        if sel.merged_at_end:
            last = int(torch.cat([kept_at, donors]).max())
            keys.append(last * slot + steps)
        else:
            keys.append(donors * slot + steps)  # after its donor; several on one donor in the given order
        seg_i.append(donors)
        seg_h.append(sel.merged.to(hid.dtype))
        seg_m.append(torch.ones(n_merged, dtype=torch.bool, device=mrg.device))
    perm = torch.argsort(torch.cat(keys), stable=True)
    at = torch.cat(seg_i)[perm]
    h = torch.cat(seg_h)[perm]
    p, o = pos[at], org[at]
    m = torch.cat(seg_m)[perm]
    if policy == "contiguous":
        p = contiguous_positions(p, o >= 0)
    return h, p, o, m


def contiguous_positions(pos: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """One sample's position ids ``[S, P]`` renumbered as if the (reduced) sequence were the input.

    ``P = 1``: ``first, first + 1, ...``. ``P = 3`` (M-RoPE): visual tokens keep their ids;
    every text token takes the previous token's largest id + 1 on all axes.

    >>> import torch
    >>> contiguous_positions(torch.tensor([[0], [1], [5], [9], [12]]), torch.tensor([False, True, True, False, False])).flatten().tolist()
    [0, 1, 2, 3, 4]
    >>> ids = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 1, 3], [6, 6, 6]])  # text, two kept image tokens, text
    >>> contiguous_positions(ids, torch.tensor([False, True, True, False])).tolist()
    [[0, 0, 0], [1, 1, 1], [1, 1, 3], [4, 4, 4]]
    """
    if pos.shape[0] == 0:
        return pos
    if pos.shape[1] == 1:
        return pos[:1] + torch.arange(pos.shape[0], device=pos.device)[:, None]
    out = pos.clone()
    nxt = int(pos[0].max())  # the first token keeps its ids
    for i in range(1, pos.shape[0]):
        if not bool(visual[i]):
            out[i] = nxt + 1
        nxt = max(nxt + 1 if not bool(visual[i]) else nxt, int(out[i].max()))
    return out


def repad(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]], dim: int, pdim: int, like: torch.Tensor) -> TokenLayout:
    batch, length = len(rows), max(r[0].shape[0] for r in rows)
    hidden = like.new_zeros(batch, length, dim)
    pos = torch.zeros(batch, length, pdim, dtype=torch.long, device=like.device)
    valid = torch.zeros(batch, length, dtype=torch.bool, device=like.device)
    origin = torch.full((batch, length), -1, dtype=torch.long, device=like.device)
    merged = torch.zeros(batch, length, dtype=torch.bool, device=like.device)
    for b, (h, p, o, m) in enumerate(rows):
        n = h.shape[0]
        hidden[b, length - n :] = h
        pos[b, length - n :] = p
        valid[b, length - n :] = True
        origin[b, length - n :] = o
        merged[b, length - n :] = m
    return TokenLayout(hidden, pos, valid, origin, merged)
