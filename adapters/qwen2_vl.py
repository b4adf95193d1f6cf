"""Qwen2-VL adapter: any ``Qwen2VLForConditionalGeneration`` checkpoint, stock ``transformers``.

The base of the Qwen vision-language family here: :class:`~tokenbench.adapters.qwen2_5_vl.Qwen2_5_VLAdapter`
adds only the vision tower's windowed attention.

Visual tokens are the merged tokens after the vision tower's patch merger (one per
``m × m`` patches, ``m = spatial_merge_size``), in the order the language model sees
them. Each image has its own grid ``(h/m, w/m)`` from its ``image_grid_thw`` and its own
count ``N``; budgets resolve per image.

Encoder saliency (the tower has no [CLS] token): for every merged token, the mean
attention its patches receive in the saliency block, the tower's last block (every
Qwen2-VL block attends over the whole image). That block's input, rotary tables and
per-image boundaries are captured by a forward pre-hook during the normal (SDPA)
vision forward; q and k are recomputed from its ``norm1`` and ``qkv`` with the
tower's own rotary application; ``softmax(q·kᵀ·scale)`` over each image's patches is
averaged over heads and over all query rows of that image (so each image's patch
saliencies sum to 1), then averaged over the ``m²`` patches of each merged token.
The same rule as the Qwen2.5-VL adapter's, whose last full-attention block this is.

Positions: the 3-D M-RoPE ids (temporal, height, width) are computed once for the
whole unpruned, left-padded batch by the stock ``get_rope_index``; kept tokens keep
theirs, merged tokens take their donor's. Decoding continues at the last prompt
position + 1 on all three axes, which equals the stock ``generate`` (text position +
``rope_deltas``): the prompt ends in text, whose position is the largest.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from tokenbench import DecoderAdapter, DecoderParts, EncodedBatch, ModelLoadError, TokenCounts, load_pretrained, mark_phase, torch_dtype

#: score-matrix entries computed at once by the saliency (bounds its memory)
_CHUNK = 1 << 26


class Qwen2VLAdapter(DecoderAdapter):
    name = "qwen2_vl"
    description = "Qwen2-VL (Qwen2VLForConditionalGeneration), last vision-block saliency, 3-D M-RoPE"
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    #: the ``transformers`` class :meth:`load` builds, and the modeling module of its rotary functions
    hf_class: ClassVar[str] = "Qwen2VLForConditionalGeneration"
    modeling: ClassVar[str] = "transformers.models.qwen2_vl.modeling_qwen2_vl"

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        cfg = model.config
        if "sliding_attention" in (getattr(cfg.text_config, "layer_types", None) or []):
            raise ModelLoadError(f"{source}: sliding-window decoder layers (use_sliding_window) are not supported")
        self.image_token_id = cfg.image_token_id
        self.merge = cfg.vision_config.spatial_merge_size
        self.saliency_block = self.saliency_block_index(cfg.vision_config)
        super().__init__(model, processor, source, device, dtype)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        min_pixels: int | str | None = None,
        max_pixels: int | str | None = None,
        **options: Any,
    ) -> Qwen2VLAdapter:
        """``min_pixels``/``max_pixels`` go to the image processor (they set the visual token counts)."""
        import transformers

        pixels = {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        hf, processor = load_pretrained(
            getattr(transformers, cls.hf_class), model, device=device, dtype=dtype, processor_options=pixels, processor_loader=load_processor, **options
        )
        return cls(hf, processor, model, device, dtype)

    # ------------------------------------------------------------------ what differs within the family

    @staticmethod
    def saliency_block_index(vision_config: Any) -> int:
        """The vision block whose received attention is the saliency: the last one."""
        return int(vision_config.depth) - 1

    @staticmethod
    def tower_width(vision_config: Any) -> int:
        """The vision blocks' hidden size (the patch merger's input width)."""
        return int(vision_config.embed_dim)

    def to_language_order(self, merged: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Per-merged-token values in the tower's order, put in the language model's order (the same here)."""
        return merged

    # ------------------------------------------------------------------ the adapter hooks

    def decoder_parts(self) -> DecoderParts:
        # In transformers 5 the rotary embedding already interleaves the three axes by
        # ``mrope_section`` (cos/sin come out [B,S,head_dim]); applying them is plain RoPE.
        return self.stock_decoder_parts(importlib.import_module(self.modeling).apply_rotary_pos_emb, position_dims=3)

    def describe(self) -> dict[str, Any]:
        size = getattr(self.processor.image_processor, "size", None)
        return {**super().describe(), "min_pixels": _size(size, "shortest_edge", "min_pixels"), "max_pixels": _size(size, "longest_edge", "max_pixels")}

    def vision_macs(self, counts: TokenCounts) -> tuple[int, int]:
        """(vision tower without merger, patch merger) multiply-adds for one image of ``counts.grid``, traced once per grid."""
        visual, vcfg = self.model.model.visual, self.model.config.vision_config
        h, w = counts.grid[0] * self.merge, counts.grid[1] * self.merge
        param = next(visual.parameters())
        pixels = torch.zeros(h * w, vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size**2, dtype=param.dtype, device=param.device)
        thw = torch.tensor([[1, h, w]], device=param.device)
        tower = self.meter.count(("vision", h, w), visual, (pixels,), {"grid_thw": thw})
        patches = torch.zeros(h * w, self.tower_width(vcfg), dtype=param.dtype, device=param.device)
        merger = self.meter.count(("projector", h, w), visual.merger, (patches,))
        return tower - merger, merger

    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> EncodedBatch:
        """Merged visual tokens in place of the ``<|image_pad|>`` tokens, per-image grids, stock 3-D M-RoPE positions."""
        dev = self.device
        ids = inputs["input_ids"].to(dev)
        attn = inputs["attention_mask"].to(dev).bool()
        thw = inputs["image_grid_thw"].to(dev)
        is_img = ids == self.image_token_id
        mm = inputs.get("mm_token_type_ids")
        mm = is_img.int() if mm is None else mm.to(dev)
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        feats, sal = self.encode_images(inputs["pixel_values"].to(dev), thw, saliency=saliency)
        if len(feats) != ids.shape[0]:
            raise ValueError(f"the {self.name} adapter takes exactly one image per sample")
        pos, _ = self.model.model.get_rope_index(ids, mm, image_grid_thw=thw, attention_mask=attn.long())  # [3,B,S]
        layout = self.visual_layout(ids, attn, is_img, feats, pos.permute(1, 2, 0).contiguous())
        return EncodedBatch(layout, [(h // self.merge, w // self.merge) for _, h, w in thw.tolist()], sal)

    @torch.no_grad()
    def encode_images(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, saliency: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per image: the merged visual tokens [N, d] in the language model's order and, if asked, their saliency [N]."""
        visual = self.model.model.visual
        seen: dict[str, Any] = {}

        def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen.update(x=args[0] if args else kwargs["hidden_states"], cu=kwargs["cu_seqlens"], rope=kwargs["position_embeddings"])

        hook = visual.blocks[self.saliency_block].register_forward_pre_hook(grab, with_kwargs=True) if saliency else None
        try:
            out = self.model.model.get_image_features(pixel_values.to(torch_dtype(self.dtype)), grid_thw, return_dict=True)
        finally:
            if hook is not None:
                hook.remove()
        feats = list(out.pooler_output)
        if not saliency:
            return feats, None
        sal = self._saliency(seen["x"], seen["cu"], seen["rope"], grid_thw)
        return feats, list(sal.split([int(f.shape[0]) for f in feats]))

    def _saliency(self, x: torch.Tensor, cu_seqlens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], grid_thw: torch.Tensor) -> torch.Tensor:
        """[total merged tokens]: mean attention received in the saliency block, pooled, in the language model's order."""
        visual = self.model.model.visual
        block = visual.blocks[self.saliency_block]
        att = block.attn
        s = x.shape[0]
        q, k, _ = att.qkv(block.norm1(x)).reshape(s, 3, att.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = importlib.import_module(self.modeling).apply_rotary_pos_emb_vision(q, k, *rope)
        received = torch.zeros(s, dtype=torch.float32, device=x.device)
        bounds = [int(v) for v in cu_seqlens.tolist()]
        for a, b in zip(bounds[:-1], bounds[1:]):  # full attention: one span per image
            qs, ks = q[a:b].transpose(0, 1).float(), k[a:b].transpose(0, 1).float()  # [H, n, hd]
            n = b - a
            step = max(1, _CHUNK // (att.num_heads * n))
            for r in range(0, n, step):
                probs = (qs[:, r : r + step] @ ks.transpose(1, 2) * att.scaling).softmax(dim=-1)
                received[a:b] += probs.sum(dim=(0, 1))
            received[a:b] /= att.num_heads * n
        pooled = received.view(-1, visual.spatial_merge_size**2).mean(dim=1)  # merged tokens, the tower's order
        return self.to_language_order(pooled, grid_thw)


class ImageOnlyProcessor:
    """A Qwen-VL processor for text with images, built from the checkpoint's tokenizer,
    image processor and chat template, for environments without torchvision (which the
    stock processor's video processor needs). It expands each ``<|image_pad|>`` to the
    image's merged-token count and returns ``mm_token_type_ids`` like the stock one."""

    def __init__(self, tokenizer: Any, image_processor: Any, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def apply_chat_template(self, conversation: list[dict[str, Any]], add_generation_prompt: bool = False, **_: Any) -> str:
        return str(
            self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt)
        )

    def __call__(self, images: Any, text: Sequence[str], return_tensors: str = "pt", padding: bool = True, **_: Any) -> dict[str, Any]:
        vis = dict(self.image_processor(images=images, return_tensors=return_tensors))
        per_image = iter((vis["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist())
        expanded = []
        for t in text:
            head, *rest = t.split(self.image_token)
            expanded.append(head + "".join(self.image_token * int(next(per_image)) + part for part in rest))
        enc = dict(self.tokenizer(expanded, return_tensors=return_tensors, padding=padding))
        return {**enc, **vis, "mm_token_type_ids": (enc["input_ids"] == self.image_token_id).int()}


def load_processor(source: str, **options: Any) -> Any:
    """The checkpoint's ``AutoProcessor``; without torchvision, an :class:`ImageOnlyProcessor`."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(source, **options)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
    tokenizer = AutoTokenizer.from_pretrained(source)
    template = _read_template(source) or getattr(tokenizer, "chat_template", None)  # the processor's first, as AutoProcessor
    return ImageOnlyProcessor(tokenizer, AutoImageProcessor.from_pretrained(source, **options), template)


def _read_template(source: str) -> str | None:
    """The processor's chat template file (``chat_template.jinja`` or ``.json``), local or cached from the hub."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            text = Path(path).read_text()
            return str(json.loads(text)["chat_template"]) if name.endswith(".json") else text
    return None


def _size(size: Any, *keys: str) -> int | None:
    for key in keys:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value is not None:
            return int(value)
    return None
