"""The attention masks the stock decoder layers take, per attention kernel, for a pruned batch.

A pruned, left-padded batch has invalid entries anywhere (padding on the left, dropped
tokens of the shorter samples of an LLM stage), so the layers get a mask whenever a
layer's input is not entirely valid. Each kernel of ``transformers`` reads its mask
differently; the layers pass it through untouched:

* ``sdpa``: ``None`` (the kernel's own causal path) without invalid entries, else a bool
  ``[B, 1, Q, K]`` mask, ``True`` where attention is allowed;
* ``eager``: added to the scores, so a float ``[B, 1, Q, K]`` mask of 0 and the dtype's
  minimum, *always* at prefill (eager has no causal path of its own); ``None`` for one
  decoded token over a fully valid cache;
* ``flash_attention_2`` (and ``_3``): the 2-D ``[B, K]`` padding mask that its varlen
  path unpads by (causal order is the order of the kept entries), ``None`` when all
  entries are valid.

A padding query row attends to itself (sdpa, eager) so that no row is fully masked,
which would put NaN into values that valid rows multiply by zero.

>>> valid = torch.tensor([[False, True, True]])
>>> prefill_mask(valid, "sdpa")[0, 0].int().tolist()
[[1, 0, 0], [0, 1, 0], [0, 1, 1]]
>>> prefill_mask(valid, "flash_attention_2").tolist(), prefill_mask(torch.ones(1, 3, dtype=torch.bool), "sdpa")
([[0, 1, 1]], None)
>>> (prefill_mask(torch.ones(1, 2, dtype=torch.bool), "eager", torch.float32)[0, 0] == 0).tolist()
[[True, False], [True, True]]
"""

from __future__ import annotations

import torch

__all__ = ["decode_mask", "prefill_mask"]


def _flash(kernel: str) -> bool:
    return kernel.startswith("flash_attention")


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefill_mask(valid: torch.Tensor, kernel: str, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The mask for a prefill over ``valid`` ``[B, S]`` entries under ``kernel`` (``dtype``: eager's scores)."""
    full = bool(valid.all())
    if _flash(kernel):
        return None if full else valid.long()
    if full and kernel != "eager":
        return None
    s = valid.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=valid.device).tril()
    allowed = causal[None] & valid[:, None, :]
    allowed |= torch.eye(s, dtype=torch.bool, device=valid.device)[None]
    allowed = allowed[:, None]
    return _additive(allowed, dtype) if kernel == "eager" else allowed


def decode_mask(valid: torch.Tensor, full: bool, kernel: str, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The mask for one decoded token over a cache of ``valid`` ``[B, K]`` entries (``full``: all of them valid)."""
    if full:
        return None
    if _flash(kernel):
        return valid.long()
    allowed = valid[:, None, None, :]
    return _additive(allowed, dtype) if kernel == "eager" else allowed
