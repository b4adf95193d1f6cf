"""DeepSeek-VL adapter: any ``DeepseekVLForConditionalGeneration`` checkpoint, stock ``transformers``.

DeepSeek-VL is LLaVA-shaped with other parts: a SigLIP vision tower (no [CLS] token),
an MLP aligner and a Llama decoder; the image is resized and padded to the tower's
square input, so every image gives the same ``(image_size / patch_size)²`` visual tokens
in a square grid, in place of the processor's image placeholder tokens.

Encoder saliency (SigLIP has no [CLS] row): the mean attention each patch receives in
the last encoder layer, averaged over heads and query rows (it sums to 1 over the
image). That layer's input comes from the tower's hidden states; q and k are
recomputed from its ``layer_norm1``, ``q_proj`` and ``k_proj``, so the tower keeps its
SDPA kernel.

Everything else (the prompt by the chat template, budgets, the staged forward pass
with its pruned KV cache, greedy decoding, results, FLOPs of the decoder) is
:class:`tokenbench.DecoderAdapter`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

import tokenbench


class DeepseekVLAdapter(tokenbench.DecoderAdapter):
    name = "deepseek_vl"
    description = "DeepSeek-VL (DeepseekVLForConditionalGeneration), SigLIP last-layer saliency, 1-D RoPE (example plugin)"
    family = "deepseek_vl"
    model_types = ("deepseek_vl",)

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        self.image_token_id = model.config.image_token_id
        super().__init__(model, processor, source, device, dtype)

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> DeepseekVLAdapter:
        from transformers import DeepseekVLForConditionalGeneration

        hf, processor = tokenbench.load_pretrained(DeepseekVLForConditionalGeneration, model, device=device, dtype=dtype, **options)
        return cls(hf, processor, model, device, dtype)

    @classmethod
    def visual_token_capacity(cls, config: dict[str, Any]) -> int | None:
        vision = config.get("vision_config", {})
        return int((vision.get("image_size", 384) // vision.get("patch_size", 16)) ** 2)

    def decoder_parts(self) -> tokenbench.DecoderParts:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        return self.stock_decoder_parts(apply_rotary_pos_emb)

    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> tokenbench.EncodedBatch:
        ids = inputs["input_ids"].to(self.device)
        valid = inputs["attention_mask"].to(self.device).bool()
        pixels = inputs["pixel_values"].to(self.device, tokenbench.torch_dtype(self.dtype))
        tokenbench.mark_phase("vision_start")  # timed loop only: time to first token starts here
        out = self.model.model.get_image_features(pixels, output_hidden_states=saliency or None, return_dict=True)
        feats = list(out.pooler_output)  # the aligner's output, per image [N, d]
        sal = list(self._saliency(out.hidden_states[-2])) if saliency else None
        layout = self.visual_layout(ids, valid, ids == self.image_token_id, feats, self.sequential_positions(valid))
        side = math.isqrt(int(feats[0].shape[0]))
        return tokenbench.EncodedBatch(layout, [(side, side)] * len(feats), sal)

    def _saliency(self, layer_input: torch.Tensor) -> torch.Tensor:
        """[B, N]: the attention each patch receives in the tower's last layer (heads and queries averaged)."""
        layer = self.model.model.vision_model.encoder.layers[-1]
        att = layer.self_attn
        x = layer.layer_norm1(layer_input)
        b, s, _ = x.shape
        q = att.q_proj(x).view(b, s, att.num_heads, att.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(b, s, att.num_heads, att.head_dim).transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)).float() * att.scale).softmax(dim=-1)  # [B, H, S, S]
        return probs.mean(dim=(1, 2))

    def vision_macs(self, counts: tokenbench.TokenCounts) -> tuple[int, int]:
        """(SigLIP tower, aligner) multiply-adds for one image, each traced once."""
        vcfg = self.model.config.vision_config
        param = next(self.model.parameters())
        pixels = torch.zeros(1, vcfg.num_channels, vcfg.image_size, vcfg.image_size, dtype=param.dtype, device=param.device)
        tower = self.meter.count(("vision", vcfg.image_size), self.model.model.vision_model, (pixels,))
        feats = torch.zeros(1, counts.num_visual, vcfg.hidden_size, dtype=param.dtype, device=param.device)
        aligner = self.meter.count(("projector", counts.num_visual), self.model.model.aligner, (feats,))
        return tower, aligner
