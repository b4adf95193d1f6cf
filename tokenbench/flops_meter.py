"""FLOPs of a reduced forward pass, counted by fvcore on the shapes it actually had.

Every decoder layer of a model has the same structure, so a layer that processed
``s`` tokens costs ``macs(s)``: one fvcore trace of one stock layer per distinct ``s``
(cached), summed over the layers with the sequence lengths measured in the pass. The
vision encoder and projector are traced once per input shape. Decode cost per token
is analytic (from the config and the cache length of every layer), cross-checked
against fvcore in the tests. FLOPs = 2 × multiply-adds.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from tokenbench.adapter import GenerationResult
from tokenbench.decoding import DecoderParts
from tokenbench.flops import MacCounter, flops_from_macs
from tokenbench.flops_analytic import decode_macs_per_token


class FlopsMeter:
    """Per-sample prefill and decode FLOPs for one adapter."""

    def __init__(self, parts: DecoderParts, text_config: Any, vision_macs: Callable[[GenerationResult], tuple[int, int]]) -> None:
        self.parts = parts
        self.text_config = text_config
        self.vision_macs = vision_macs
        self.counter = MacCounter()

    def layer_macs(self, seq_len: int) -> int:
        """Multiply-adds of one decoder layer over ``seq_len`` tokens (prefill, no cache)."""
        layer = self.parts.layers[0]
        param = next(layer.parameters())
        hidden = torch.zeros(1, seq_len, self.text_config.hidden_size, dtype=param.dtype, device=param.device)
        pos = torch.arange(seq_len, device=param.device)[None, :, None].expand(1, seq_len, self.parts.position_dims)
        kwargs = {"attention_mask": None, "position_embeddings": self.parts.rotary(hidden, pos), "position_ids": self.parts.position_ids(pos)}
        return self.counter.count(("layer", seq_len), layer, (hidden,), kwargs)

    def measure(self, result: GenerationResult) -> dict[str, int]:
        seq = [result.text_tokens + n for n in result.tokens_per_layer]
        llm = sum(self.layer_macs(s) for s in seq)
        head = self.text_config.hidden_size * self.text_config.vocab_size  # lm_head on the last position
        vision, projector = self.vision_macs(result)
        decode = decode_macs_per_token(self.text_config, seq)
        return {
            "vision": flops_from_macs(vision),
            "projector": flops_from_macs(projector),
            "llm_prefill": flops_from_macs(llm + head),
            "decode_per_token": flops_from_macs(decode),
            "total_prefill": flops_from_macs(vision + projector + llm + head),
        }
