"""The attention signal of one decoder layer, computed only as far as a strategy asks.

An LLM-stage strategy that scores visual tokens by attention (``StageSpec.llm(k,
"attention", query=...)``: FastV, SparseVLM, PyramidDrop, DART) needs, for each sample,
the head-averaged softmax attention of some query rows (the last one, the text rows, or
all) over the visual tokens in layer ``k``. The stock layer ran with SDPA and kept no
probabilities, so :class:`LayerSignals` recomputes them, as cheaply as the signal
allows:

- the keys are read from the layer's own KV-cache entry (post-RoPE, exactly as the layer
  attended with them) when the cache holds the whole prompt; otherwise they are
  recomputed from the layer's input with its own norm, ``k_proj`` and rotary;
- only the asked-for query rows are normed, projected and rotated;
- grouped-query heads share their key head (no ``repeat_interleave``).

``tests/test_adapter_llava.py`` and ``tests/test_adapter_qwen.py`` check the result
against eager attention probabilities, from the cache and recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: the rotary application to one tensor: ``(x, cos, sin) -> x`` (``DecoderParts.apply_rope``)
RotateFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class LayerSignals:
    """Lazily computed signals of one decoder layer, for one batch.

    ``layer_in``: the layer's input hidden states ``[B, S, d]``; ``rope``: its rotary
    tables; ``valid``/``visual``: ``[B, S]`` masks of the real and the visual positions;
    ``text``: of the text positions (the ``"text"`` query rows; default: every
    non-visual one; separators among the visual tokens are neither);
    ``cache``, ``layer_index``: where the layer's keys may be read.
    """

    def __init__(
        self,
        layer: Any,
        layer_in: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        apply_rope: RotateFn,
        valid: torch.Tensor,
        visual: torch.Tensor,
        *,
        cache: Any = None,
        layer_index: int = 0,
        text: torch.Tensor | None = None,
    ) -> None:
        self.layer, self.layer_in, self.rope, self.apply_rope = layer, layer_in, rope, apply_rope
        self.keys = cached_keys(cache, layer_index, layer_in.shape[1])
        self.valid = valid.clone()
        self.visual = visual.clone()
        self.text = ~self.visual if text is None else text.clone()

    def attention(self, b: int, query: str) -> torch.Tensor:
        """Head-averaged attention probabilities [Q, n_visual] of sample ``b``'s query rows."""
        attn: Any = self.layer.self_attn
        cols = torch.nonzero(self.valid[b]).squeeze(1)
        visual = self.visual[b, cols]
        if query == "last":
            rows = cols[-1:]
        elif query == "text":
            rows = cols[self.text[b, cols]]
        else:
            rows = cols
        hd = attn.head_dim
        cos, sin = (t[b : b + 1] if t.dim() == 3 else t[:, b : b + 1] for t in self.rope)
        q = attn.q_proj(self.layer.input_layernorm(self.layer_in[b : b + 1, rows])).view(1, rows.numel(), -1, hd).transpose(1, 2)
        q = self.apply_rope(q, *(_rows(t, rows) for t in (cos, sin)))  # [1, H, Q, hd]
        if self.keys is not None:
            k = self.keys[b : b + 1, :, cols]
        else:
            k = attn.k_proj(self.layer.input_layernorm(self.layer_in[b : b + 1, cols])).view(1, cols.numel(), -1, hd).transpose(1, 2)
            k = self.apply_rope(k, *(_rows(t, cols) for t in (cos, sin)))  # [1, H_kv, S_b, hd]
        heads, kv_heads = q.shape[1], k.shape[1]
        q = q.view(1, kv_heads, heads // kv_heads, rows.numel(), hd)  # grouped queries share their key head: no repeat
        scores = (q @ k[:, :, None].transpose(-1, -2)).float().view(1, heads, rows.numel(), cols.numel()) * attn.scaling
        causal = rows[:, None] >= cols[None, :]
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = scores.softmax(dim=-1).mean(dim=1)[0]  # [Q, S_b]
        return probs[:, visual]


def cached_keys(cache: Any, idx: int, length: int) -> torch.Tensor | None:
    """Layer ``idx``'s post-RoPE keys ``[B, H_kv, S, hd]`` in a stock ``DynamicCache``, if it holds all ``length`` positions."""
    layers = getattr(cache, "layers", None)
    keys = getattr(layers[idx], "keys", None) if layers is not None and idx < len(layers) else None
    return keys if isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[2] == length else None


def _rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return t[..., rows, :]
