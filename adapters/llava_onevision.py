"""LLaVA-OneVision adapter: any ``LlavaOnevisionForConditionalGeneration`` checkpoint, stock ``transformers``.

As LLaVA-NeXT (:class:`~tokenbench.adapters.llava_next.LlavaNextAdapter`), with what
the stock model does differently (``transformers`` 5.x,
``models/llava_onevision/modeling_llava_onevision.py``, ``pack_image_features``,
``get_image_features``, ``get_video_features``, ``apply_pooling``):

- a SigLIP tower (no [CLS] token; every patch is a visual token);
- AnyRes-max: when the unpadded crop grid holds more than ``1.1² × max`` base views
  (``vision_aspect_ratio="anyres_max_9"``: 9), it is resized bilinearly to
  ``⌊rows / r⌋ × ⌊cols / r⌋``, ``r = √(rows·cols / (max·h·w))``; its tokens are then
  bilinear mixes of patches, and the ``"crops"`` segment is that resized grid;
- a sample with several images gives each image its base view only, followed by one
  ``image_newline`` (segment ``"image"``); one image per sample gets AnyRes (the
  processor is given each sample's images as one list, as the stock processor expects);
- a video: every frame through the tower, its grid pooled 2×2 (bilinear to
  ``⌈h/2⌉ × ⌈w/2⌉``), frame after frame, one ``image_newline`` after the last frame:
  one ``"frame"`` segment per frame. The stock video processor needs torchvision;
  without it a sample with a video is one recorded error that says so.

Saliency (SigLIP has no [CLS]): the mean attention each patch receives in the layer the
features come from (``vision_feature_layer``, -1: the last), over all query rows and
heads of its tower pass, recomputed from that layer's input with its own norm and
projections (each pass's values sum to 1); crops laid out, unpadded and resized exactly
as the features; video frames pooled as the features. No official code of the built-in
methods runs LLaVA-OneVision (docs/strategies.md, "Several segments"); this is the rule
tokenbench uses for every tower without a [CLS] token (the Qwen adapters' too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tokenbench import load_pretrained, load_processor, torch_dtype
from tokenbench.adapters.llava_next import LlavaNextAdapter, Visual
from tokenbench.adapters.vision_attention import attention_probs, feature_layer_input


class LlavaOnevisionAdapter(LlavaNextAdapter):
    name = "llava_onevision"
    description = (
        "LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): SigLIP, AnyRes-max with image_newline, video pooled 2x2, received-attention saliency"
    )
    family = "llava"
    model_types = ("llava_onevision",)
    tower_has_cls = False
    takes_video = True
    video_fps = None
    #: frames sampled evenly from a video (lmms-eval's llava_onevision default: 32)
    video_frames = 32

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        self.video_token_id = model.config.video_token_id
        self.aspect = str(model.config.vision_aspect_ratio)
        super().__init__(model, processor, source, device, dtype)

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> LlavaOnevisionAdapter:
        from transformers import LlavaOnevisionForConditionalGeneration

        hf, processor = load_pretrained(LlavaOnevisionForConditionalGeneration, model, device=device, dtype=dtype, processor_loader=load_processor, **options)
        return cls(hf, processor, model, device, dtype)

    def processor_inputs(self, images: Sequence[Sequence[Any]], videos: Sequence[Sequence[Any]], texts: Sequence[str]) -> Mapping[str, Any]:
        """Each sample's images as one list (several images: base views only), videos as frame lists."""
        kwargs: dict[str, Any] = {}
        if any(images):
            kwargs["images"] = [list(ims) for ims in images if ims]
        if any(videos):
            kwargs["videos"] = [list(v) for v in videos if v]
        return self.processor(text=list(texts), return_tensors="pt", padding=True, **kwargs)

    def placeholder_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self.image_token_id) | (ids == self.video_token_id)

    def shrunk(self, rows: int, cols: int) -> tuple[int, int]:
        """AnyRes-max: the stock rule resizes a grid of more than ``1.1² × max`` base views."""
        side = self._side()
        most = int(self.aspect.removeprefix("anyres_max_"))  # the stock code strips those characters: the same for anyres_max_N
        ratio = math.sqrt(rows * cols / (most * side**2))
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    def encode_visuals(self, inputs: Mapping[str, Any], *, saliency: bool) -> list[Visual]:
        """The images (as LLaVA-NeXT, AnyRes-max) then the videos, each in prompt order; a sample holds its images before its video."""
        images = self.encode_images(inputs, saliency=saliency, vision_aspect_ratio=self.aspect, batch_num_images=inputs.get("batch_num_images"))
        videos = self._videos(inputs, saliency=saliency) if "pixel_values_videos" in inputs else []
        return self._in_prompt_order(inputs["input_ids"], images, videos)

    def _in_prompt_order(self, ids: torch.Tensor, images: list[Visual], videos: list[Visual]) -> list[Visual]:
        """Per sample, its images then its video (the chat template's order), sample after sample."""
        image_q, video_q, out = iter(images), iter(videos), []
        for row in ids:
            for token, queue in ((self.image_token_id, image_q), (self.video_token_id, video_q)):
                need = int((row == token).sum())
                while need > 0:
                    visual = next(queue)
                    out.append(visual)
                    need -= int(visual.rows.shape[0])
        return out

    def _videos(self, inputs: Mapping[str, Any], *, saliency: bool) -> list[Visual]:
        pixels = inputs["pixel_values_videos"].to(self.device, torch_dtype(self.dtype))
        out = self.model.model.get_video_features(
            pixel_values_videos=pixels,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=saliency or None,
            return_dict=True,
        )
        frames = int(pixels.shape[1])
        side = self._side()
        pooled = math.ceil(side / 2)
        per_frame = None
        if saliency:
            maps = self.pass_saliency(out.hidden_states).view(-1, 1, side, side)
            per_frame = torch.nn.functional.interpolate(maps, size=[pooled, pooled], mode="bilinear").flatten(1)  # as apply_pooling
        visuals = []
        for v, rows in enumerate(out.pooler_output):  # [frames * pooled² + 1, d]
            sep = torch.zeros(int(rows.shape[0]), dtype=torch.bool)
            sep[-1] = True
            sal = None if per_frame is None else per_frame[v * frames : (v + 1) * frames].flatten()
            visuals.append(Visual(rows, [("frame", (pooled, pooled))] * frames, sep, sal, frames))
        return visuals

    def pass_saliency(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``[passes, h*w]``: the mean attention each patch receives in the feature layer (all query rows and heads)."""
        index, x = feature_layer_input(hidden_states, self.feature_layer)
        layer = self.model.model.vision_tower.encoder.layers[index]
        att = layer.self_attn
        return attention_probs(layer.layer_norm1(x), att.q_proj, att.k_proj, att.num_heads, att.scale).mean(dim=(1, 2))
