"""FLOPs of a reduced forward pass, counted by fvcore on the shapes it actually had.

Every decoder layer of a model has the same structure, so a layer that processed
``s`` tokens costs ``macs(s)``: one fvcore trace of one stock layer per distinct ``s``
(cached), summed over the layers with the sequence lengths measured in the pass. The
vision encoder and projector are traced once per input shape. Decode cost per token
is analytic (from the config and the cache length of every layer), cross-checked
against fvcore in the tests. FLOPs = 2 × multiply-adds.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

from tokenbench.adapter import TokenCounts
from tokenbench.decoding import DecoderParts
from tokenbench.flops import MacCounter, flops_from_macs
from tokenbench.flops_analytic import decode_macs_per_token


class FlopsMeter:
    """Per-sample prefill and decode FLOPs for one adapter, from token counts alone.

    ``parts`` is the adapter's view of its language model, ``text_config`` that model's
    config (``hidden_size``, ``vocab_size`` and what :func:`decode_macs_per_token`
    reads), and ``vision_macs(counts)`` the model-specific part: the (vision encoder,
    projector) multiply-adds of one image with those counts, typically traced once per
    shape with :meth:`count`.
    """

    def __init__(self, parts: DecoderParts, text_config: Any, vision_macs: Callable[[TokenCounts], tuple[int, int]]) -> None:
        self.parts = parts
        self.text_config = text_config
        self.vision_macs = vision_macs
        self.counter = MacCounter()

    def count(self, key: Hashable, module: torch.nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> int:
        """Multiply-adds of ``module(*args, **kwargs)``, traced by fvcore on the first call with ``key`` only.

        The key must determine the count, e.g. ``("vision", image_size)``.
        """
        return self.counter.count(key, module, args, kwargs)

    def layer_macs(self, seq_len: int) -> int:
        """Multiply-adds of one decoder layer over ``seq_len`` tokens (prefill, no cache)."""
        layer = self.parts.layers[0]
        param = next(layer.parameters())
        hidden = torch.zeros(1, seq_len, self.text_config.hidden_size, dtype=param.dtype, device=param.device)
        pos = torch.arange(seq_len, device=param.device)[None, :, None].expand(1, seq_len, self.parts.position_dims)
        kwargs = {"attention_mask": None, "position_embeddings": self.parts.rotary(hidden, pos), "position_ids": self.parts.position_ids(pos)}
        return self.count(("layer", seq_len), layer, (hidden,), kwargs)

    def measure(self, counts: TokenCounts) -> dict[str, int]:
        """FLOPs of one sample's forward: ``vision``, ``projector``, ``llm_prefill``, ``decode_per_token``, ``total_prefill``."""
        seq = [counts.text_tokens + n for n in counts.tokens_per_layer]
        llm = sum(self.layer_macs(s) for s in seq)
        head = self.text_config.hidden_size * self.text_config.vocab_size  # lm_head on the last position
        vision, projector = self.vision_macs(counts)
        decode = decode_macs_per_token(self.text_config, seq)
        return {
            "vision": flops_from_macs(vision),
            "projector": flops_from_macs(projector),
            "llm_prefill": flops_from_macs(llm + head),
            "decode_per_token": flops_from_macs(decode),
            "total_prefill": flops_from_macs(vision + projector + llm + head),
        }
