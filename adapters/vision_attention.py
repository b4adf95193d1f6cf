"""One vision-tower layer's attention probabilities, recomputed for the rows a saliency needs.

The towers run with SDPA and keep no probabilities, so the adapters' encoder saliencies
(a [CLS] row for CLIP and InternViT, the attention each patch receives for SigLIP)
recompute them from the input of the layer the features come from, with that layer's
own norm and projections. The adapters' tests check the result against the eager
attention probabilities of the stock tower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def feature_layer_input(hidden_states: Sequence[torch.Tensor], feature_layer: int | Sequence[int]) -> tuple[int, torch.Tensor]:
    """(index of the layer whose output is the feature layer, that layer's input); a list of layers: the last."""
    f = feature_layer if isinstance(feature_layer, int) else feature_layer[-1]
    f = f % len(hidden_states)  # hidden_states[f] is the output of layer f-1
    return f - 1, hidden_states[f - 1]


def attention_probs(
    x: torch.Tensor,
    q_proj: Callable[[torch.Tensor], torch.Tensor],
    k_proj: Callable[[torch.Tensor], torch.Tensor],
    heads: int,
    scale: float,
    *,
    rows: slice = slice(None),
) -> torch.Tensor:
    """``[B, heads, Q, S]`` float32 softmax attention of the query ``rows`` of normed input ``x`` ``[B, S, d]``.

    ``q_proj``/``k_proj`` map ``[B, n, d]`` to ``[B, n, heads·head_dim]`` (the layer's
    projections, with any q/k norm applied after them).
    """
    b, s, _ = x.shape
    q = q_proj(x[:, rows])
    k = k_proj(x)
    q = q.view(b, q.shape[1], heads, -1).transpose(1, 2)
    k = k.view(b, s, heads, -1).transpose(1, 2)
    return ((q @ k.transpose(-1, -2)).float() * scale).softmax(dim=-1)
