"""InternVL3 adapter: any ``InternVLForConditionalGeneration`` checkpoint (the ``-hf`` releases), stock ``transformers``.

Dynamic tiles, as the stock processor and model compute them (``transformers`` 5.x,
``models/internvl/processing_internvl.py`` and ``modeling_internvl.py``,
``get_image_features`` and ``pixel_shuffle``): each image is resized to the tile grid
(at most ``max_patches`` tiles) whose aspect ratio is closest to its own and cut into
tiles row by row; a thumbnail (the whole image at one tile's size) follows when there
is more than one tile. Every tile goes through the vision tower alone; its patch
features (the [CLS] row dropped) are pixel-shuffled 2×2 into one token per four patches
(downsample ratio 0.5) and projected: 256 tokens a tile for InternVL3 (448 px, patch
14). The language model sees, per image, ``<img>``, the tiles' tokens in order, and
``</img>``; the two markers are text tokens, never seen or dropped by a strategy.

What strategies see, per image: one segment per tile (``"tile"``, ``h × w`` tokens
row-major over the tile: token ``(r, c)`` holds patches ``2r..2r+1 × 2c..2c+1``),
and the thumbnail (``"thumbnail"``) last; an image that fits one tile is one
``"image"`` segment. Several images follow one another (``source`` = the image's
index). The tile layout (rows × columns of tiles) is not recorded: a tile's grid is
its own.

Saliency: the InternViT tower has a [CLS] token, though the language model never sees
it, so the saliency is the [CLS] row of the attention of the layer the features come
from (``vision_feature_layer``; -1 for InternVL3), head-averaged, recomputed from that
layer's input with its own norm and projections, as for CLIP in the LLaVA adapter; each
token's saliency is the sum over its four pixel-shuffled patches (so each tile's sums
to 1). A strategy that ranks the whole sample compares values across tiles on that
scale. No official code of the built-in methods runs InternVL3 (docs/strategies.md,
"Several segments"); the [CLS] rule is the one the CLIP ports use. Positions: 1-D, the stock ``0 .. S-1``; kept tokens keep theirs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from tokenbench import DecoderAdapter, DecoderParts, EncodedBatch, TokenCounts, load_pretrained, load_processor, mark_phase, stack_segments, torch_dtype
from tokenbench.adapters.vision_attention import attention_probs, feature_layer_input


class InternVLAdapter(DecoderAdapter):
    name = "internvl"
    description = "InternVL3 (InternVLForConditionalGeneration): dynamic tiles + thumbnail, pixel shuffle, InternViT [CLS] saliency, 1-D RoPE"
    family = "internvl"
    model_types = ("internvl",)

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        self.ratio = float(cfg.downsample_ratio)
        super().__init__(model, processor, source, device, dtype)
        self.start_id = self.tokenizer.convert_tokens_to_ids(getattr(processor, "start_image_token", "<img>"))

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> InternVLAdapter:
        from transformers import InternVLForConditionalGeneration

        hf, processor = load_pretrained(InternVLForConditionalGeneration, model, device=device, dtype=dtype, processor_loader=load_processor, **options)
        return cls(hf, processor, model, device, dtype)

    def decoder_parts(self) -> DecoderParts:
        kind = self.text_config.model_type
        return self.stock_decoder_parts(importlib.import_module(f"transformers.models.{kind}.modeling_{kind}").apply_rotary_pos_emb)

    def _tile_pixels(self) -> int:
        """A tile's side in pixels (InternVL's configs may give ``[h, w]``; tiles are square)."""
        size = self.model.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def _tile_side(self) -> int:
        """Tokens per side of one tile after the pixel shuffle."""
        patch = self.model.config.vision_config.patch_size
        return int(self._tile_pixels() // (patch[0] if isinstance(patch, (list, tuple)) else patch) * self.ratio)

    def vision_macs(self, counts: TokenCounts) -> tuple[int, int]:
        """(vision tower, projector) multiply-adds: one tower pass and one projection per tile (``vision_inputs``: ``(tiles,)`` per image)."""
        v = self.model.config.vision_config
        size = self._tile_pixels()
        tiles = sum(shape[0] for shape in counts.vision_inputs) if counts.vision_inputs else 1
        param = next(self.model.parameters())
        pixels = torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)
        tower = self.meter.count(("vision", size), self.model.model.vision_tower, (pixels,))
        n = self._tile_side() ** 2
        width = int(v.hidden_size / self.ratio**2)
        feats = torch.zeros(1, n, width, dtype=param.dtype, device=param.device)
        proj = self.meter.count(("projector", n), self.model.model.multi_modal_projector, (feats,))
        return tower * tiles, proj * tiles

    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> EncodedBatch:
        """Tile tokens in place of the ``<IMG_CONTEXT>`` tokens; one segment per tile and the thumbnail; [CLS] saliency summed per token."""
        ids = inputs["input_ids"].to(self.device)
        attn = inputs["attention_mask"].to(self.device).bool()
        pixels = inputs["pixel_values"].to(self.device, torch_dtype(self.dtype))
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        out = self.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=saliency or None,
            return_dict=True,
        )
        tiles = out.pooler_output  # [total tiles, n, d]
        per_tile = int(tiles.shape[1])
        side = self._tile_side()
        sal = self._cls_saliency(out.hidden_states) if saliency else None  # [total tiles, n]
        is_img = ids == self.image_token_id
        feats, sals, segments, inputs_used, grids = [], [], [], [], []
        first = 0
        for b in range(ids.shape[0]):
            counts = self._tiles_per_image(ids[b], is_img[b], per_tile)
            n_tiles = sum(counts)
            feats.append(tiles[first : first + n_tiles].reshape(-1, tiles.shape[-1]))
            if sal is not None:
                sals.append(sal[first : first + n_tiles].reshape(-1))
            kinds = [(src, ["image"] if k == 1 else ["tile"] * (k - 1) + ["thumbnail"]) for src, k in enumerate(counts)]
            segs = stack_segments([(kind, (side, side), src) for src, names in kinds for kind in names])
            segments.append(segs)
            inputs_used.append(tuple((k,) for k in counts))
            grids.append((side, side) if len(segs) == 1 else (1, n_tiles * per_tile))
            first += n_tiles
        layout = self.visual_layout(ids, attn, is_img, feats, self.sequential_positions(attn))
        return EncodedBatch(layout, grids, sals if sal is not None else None, segments, inputs_used)

    def _tiles_per_image(self, ids: torch.Tensor, is_img: torch.Tensor, per_tile: int) -> list[int]:
        """Tiles of each image of one sample: the ``<IMG_CONTEXT>`` tokens after each ``<img>``, over a tile's count."""
        starts = torch.nonzero(ids == self.start_id).squeeze(1).tolist()
        ends = [*starts[1:], ids.numel()]
        return [int(is_img[a:z].sum()) // per_tile for a, z in zip(starts, ends)]

    def _cls_saliency(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[tiles, n]: the [CLS] row of the feature layer's attention, head-averaged, summed over each token's 2×2 patches."""
        index, x = feature_layer_input(hidden_states, self.feature_layer)
        layer = self.model.model.vision_tower.encoder.layer[index]
        att = layer.attention
        probs = attention_probs(
            layer.layernorm_before(x), lambda h: att.q_norm(att.q_proj(h)), lambda h: att.k_norm(att.k_proj(h)), att.num_heads, att.scale, rows=slice(0, 1)
        )
        cls = probs.mean(dim=1)[:, 0, 1:]  # [tiles, patches]
        b, side, group = cls.shape[0], int(round(cls.shape[1] ** 0.5)), int(round(1 / self.ratio))
        return cls.view(b, side // group, group, side // group, group).sum(dim=(2, 4)).flatten(1)
