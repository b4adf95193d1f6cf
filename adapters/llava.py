"""LLaVA-1.5 adapter: any ``LlavaForConditionalGeneration`` checkpoint, stock ``transformers``.

Vision stage: the projected visual tokens, the token grid, the encoder saliency (the
[CLS] row of the attention of the CLIP layer the features are taken from,
head-averaged) and the embedded prompt. LLM stage: after any decoder layer, through
:class:`tokenbench.DecoderAdapter`. Kept tokens keep their original 1-D position ids.

Several images in one sample (the checkpoint's chat template puts one ``<image>`` per
image, as the stock processor expects): each image is a segment of its own grid, in
prompt order; the budget is for the sample. A checkpoint without a chat template has
one ``<image>`` in its default prompt, so it takes one image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from tokenbench import DecoderAdapter, DecoderParts, EncodedBatch, TokenCounts, load_pretrained, mark_phase, stack_segments, torch_dtype
from tokenbench.adapters.vision_attention import attention_probs, feature_layer_input

DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"


class LlavaAdapter(DecoderAdapter):
    name = "llava"
    description = "LLaVA-1.5 family (LlavaForConditionalGeneration), CLIP [CLS] saliency, 1-D RoPE"
    family = "llava"
    model_types = ("llava",)
    default_prompt: ClassVar[str | None] = DEFAULT_PROMPT

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        super().__init__(model, processor, source, device, dtype)

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> LlavaAdapter:
        from transformers import LlavaForConditionalGeneration

        hf, processor = load_pretrained(LlavaForConditionalGeneration, model, device=device, dtype=dtype, **options)
        return cls(hf, processor, model, device, dtype)

    @classmethod
    def visual_token_capacity(cls, config: dict[str, Any]) -> int | None:
        vision = config.get("vision_config", {})
        size, patch = vision.get("image_size", 336), vision.get("patch_size", 14)
        n = (size // patch) ** 2
        return n if config.get("vision_feature_select_strategy", "default") == "default" else n + 1

    def decoder_parts(self) -> DecoderParts:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        return self.stock_decoder_parts(apply_rotary_pos_emb)

    def vision_macs(self, counts: TokenCounts) -> tuple[int, int]:
        """(vision tower, projector) multiply-adds of the sample's images (``vision_inputs``: ``((images,),)``), traced once."""
        vcfg = self.model.config.vision_config
        param = next(self.model.parameters())
        pixels = torch.zeros(1, 3, vcfg.image_size, vcfg.image_size, dtype=param.dtype, device=param.device)
        tower = self.meter.count(("vision", vcfg.image_size), self.model.model.vision_tower, (pixels,))
        feats = torch.zeros(1, counts.num_visual, vcfg.hidden_size, dtype=param.dtype, device=param.device)
        proj = self.meter.count(("projector", counts.num_visual), self.model.model.multi_modal_projector, (feats,))
        images = counts.vision_inputs[0][0] if counts.vision_inputs else 1
        return tower * images, proj

    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> EncodedBatch:
        """Projected CLIP features in place of the ``<image>`` tokens; a square grid (else one row); [CLS] saliency."""
        ids = inputs["input_ids"].to(self.device)
        attn = inputs["attention_mask"].to(self.device).bool()
        pixels = inputs["pixel_values"].to(self.device, torch_dtype(self.dtype))
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        img = self.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=saliency or None,
            return_dict=True,
        )
        per_image = list(img.pooler_output)  # per image [N, d], the batch's images in prompt order
        n_vis = int(per_image[0].shape[0])
        images = [int(n) // n_vis for n in (ids == self.image_token_id).sum(dim=1).tolist()]  # per sample
        side = math.isqrt(n_vis)
        grid = (side, side) if side * side == n_vis else (1, n_vis)
        bounds = [sum(images[:b]) for b in range(len(images) + 1)]
        feats = [torch.cat(per_image[a:z]) for a, z in zip(bounds[:-1], bounds[1:])]
        sal = None
        if saliency:  # each image's [CLS] saliency sums to 1
            cls = self._cls_saliency(img.hidden_states)
            sal = [cls[a:z].flatten() for a, z in zip(bounds[:-1], bounds[1:])]
        layout = self.visual_layout(ids, attn, ids == self.image_token_id, feats, self.sequential_positions(attn))
        segments = [stack_segments([("image", grid, k) for k in range(n)]) for n in images]
        return EncodedBatch(layout, [grid] * len(images), sal, segments, [((n,),) for n in images])

    def _cls_saliency(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[B, N]: the [CLS] row of the feature layer's attention, head-averaged, [CLS] column dropped."""
        tower = self.model.model.vision_tower
        index, x = feature_layer_input(hidden_states, self.feature_layer)
        layer = getattr(tower, "vision_model", tower).encoder.layers[index]
        att = layer.self_attn
        probs = attention_probs(layer.layer_norm1(x), att.q_proj, att.k_proj, att.num_heads, att.scale, rows=slice(0, 1)).mean(dim=1)[:, 0]  # [B, S]
        return probs[:, 1:] if self.select_strategy == "default" else probs
