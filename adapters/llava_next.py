"""LLaVA-NeXT adapter: any ``LlavaNextForConditionalGeneration`` checkpoint, stock ``transformers``.

AnyRes, as the stock model computes it (``transformers`` 5.x,
``models/llava_next/modeling_llava_next.py``, ``get_image_features`` and
``pack_image_features``): each image is encoded as a base (overview) image plus the
high-resolution crops of the best-fitting pinpoint resolution; the crops' features are
laid out as one large grid, unpadded to the image's aspect ratio, and the learned
``image_newline`` embedding follows every row of it (one ``image_newline`` follows the
base instead when the image has no crops). The language model sees, per image: the base
grid (``h × w``, no newlines), then the unpadded crop grid row by row, each row
followed by its newline: 2,000–2,900 visual tokens per image at 672 px for the 7B.

What strategies see, per image: two segments, ``"base"`` (``h × w``) and ``"crops"``
(the unpadded grid, ``rows × cols``), numbered in that order; the newlines are
separators, never seen and never dropped, and keep their place and position. Several
images in one sample follow one another, each with its two segments (``source`` = the
image's index).

Saliency ([CLS] attention of the CLIP feature layer, as :class:`LlavaAdapter`): every
tower pass (the base and each crop) has its own [CLS] row, which sums to 1 over that
pass's patches; the crops' values are laid out and unpadded exactly as their features.
A strategy that ranks by saliency over the whole sample compares values across passes
on that scale. Positions: 1-D, the stock model's ``0 .. S-1``; kept tokens keep theirs.

FLOPs: the tower runs once per pass (``1 +`` crops per image) and the projector on every
pass's patches before unpadding; ``vision_inputs`` records the passes per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from tokenbench import EncodedBatch, TokenCounts, load_pretrained, mark_phase, stack_segments, torch_dtype
from tokenbench.adapters.llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    name = "llava_next"
    description = "LLaVA-NeXT (LlavaNextForConditionalGeneration): AnyRes base + unpadded crops with image_newline, CLIP [CLS] saliency, 1-D RoPE"
    family = "llava"
    model_types = ("llava_next",)
    default_prompt = None
    #: the vision tower prepends a [CLS] token (CLIP); ``"full"`` feature selection then keeps it
    tower_has_cls = True

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> LlavaNextAdapter:
        from transformers import LlavaNextForConditionalGeneration

        hf, processor = load_pretrained(LlavaNextForConditionalGeneration, model, device=device, dtype=dtype, **options)
        return cls(hf, processor, model, device, dtype)

    @classmethod
    def visual_token_capacity(cls, config: dict[str, Any]) -> int | None:
        return None  # depends on each image's size (AnyRes)

    def vision_macs(self, counts: TokenCounts) -> tuple[int, int]:
        """(vision tower, projector) multiply-adds: one CLIP pass per base image and crop, the projector on every pass's patches."""
        vcfg = self.model.config.vision_config
        param = next(self.model.parameters())
        passes = sum(shape[0] for shape in counts.vision_inputs) if counts.vision_inputs else 1
        pixels = torch.zeros(1, 3, vcfg.image_size, vcfg.image_size, dtype=param.dtype, device=param.device)
        tower = self.meter.count(("vision", vcfg.image_size), self.model.model.vision_tower, (pixels,))
        patches = self._side() ** 2 + (1 if self.select_strategy != "default" and self.tower_has_cls else 0)
        feats = torch.zeros(1, patches, vcfg.hidden_size, dtype=param.dtype, device=param.device)
        proj = self.meter.count(("projector", patches), self.model.model.multi_modal_projector, (feats,))
        return tower * passes, proj * passes

    def _side(self) -> int:
        vcfg = self.model.config.vision_config
        return int(vcfg.image_size // vcfg.patch_size)

    def crop_layout(self, image_size: tuple[int, int]) -> tuple[int, int, slice, slice]:
        """(crops down, crops across, row slice, column slice) of one image: the unpadded part of the crop grid.

        The stock ``get_anyres_image_grid_shape`` and ``unpad_image`` decide; this only
        asks them where the kept rows and columns of the ``crops·h × crops·w`` grid are.
        """
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        cfg = self.model.config
        nph, npw = get_anyres_image_grid_shape(list(image_size), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        side = self._side()
        rows = torch.arange(nph * side)[None, :, None].expand(1, nph * side, npw * side)
        cols = torch.arange(npw * side)[None, None, :].expand(1, nph * side, npw * side)
        r, c = unpad_image(rows, list(image_size)), unpad_image(cols, list(image_size))
        return int(nph), int(npw), slice(int(r[0, 0, 0]), int(r[0, -1, 0]) + 1), slice(int(c[0, 0, 0]), int(c[0, 0, -1]) + 1)

    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> EncodedBatch:
        """Packed AnyRes features in place of the ``<image>`` tokens; base and crop segments per image; newlines as separators."""
        ids = inputs["input_ids"].to(self.device)
        attn = inputs["attention_mask"].to(self.device).bool()
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        visuals = self.encode_visuals(inputs, saliency=saliency)  # in prompt order over the batch
        slots = self.placeholder_mask(ids)
        feats, seps, sals, segments, inputs_used = [], [], [], [], []
        queue = iter(visuals)
        for rows in slots.sum(dim=1).tolist():
            parts: list[Visual] = []
            while sum(int(v.rows.shape[0]) for v in parts) < rows:
                parts.append(next(queue))
            feats.append(torch.cat([v.rows for v in parts]))
            seps.append(torch.cat([v.separators for v in parts]))
            if saliency:
                sals.append(torch.cat([v.saliency for v in parts if v.saliency is not None]))
            segments.append(stack_segments([(kind, grid, src) for src, v in enumerate(parts) for kind, grid in v.segments]))
            inputs_used.append(tuple((v.passes,) for v in parts))
        layout = self.visual_layout(ids, attn, slots, feats, self.sequential_positions(attn), separators=seps)
        grids = [s[0].grid if len(s) == 1 else (1, sum(x.count for x in s)) for s in segments]
        return EncodedBatch(layout, grids, sals if saliency else None, segments, inputs_used)

    def placeholder_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, S]``: the placeholders the visual rows are written into."""
        return ids == self.image_token_id

    def encode_visuals(self, inputs: Mapping[str, Any], *, saliency: bool) -> list[Visual]:
        """Every image of the batch, in prompt order, as the stock ``get_image_features`` packs it."""
        return self.encode_images(inputs, saliency=saliency)

    def encode_images(self, inputs: Mapping[str, Any], *, saliency: bool, **stock_options: Any) -> list[Visual]:
        """The batch's images in order; ``stock_options`` go to the stock ``get_image_features``."""
        if "pixel_values" not in inputs:
            return []
        sizes = inputs["image_sizes"].to(self.device)
        img = self.model.model.get_image_features(
            pixel_values=inputs["pixel_values"].to(self.device, torch_dtype(self.dtype)),
            image_sizes=sizes,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=saliency or None,
            return_dict=True,
            **stock_options,
        )
        per_pass = self.pass_saliency(img.hidden_states) if saliency else None  # [passes, h*w]
        out, first = [], 0
        for packed, size in zip(img.pooler_output, sizes.tolist()):
            visual = self.image_parts(packed, (int(size[0]), int(size[1])), per_pass, first)
            out.append(visual)
            first += visual.passes
        return out

    def pass_saliency(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``[passes, h*w]``: each tower pass's saliency over its patches (CLIP: the [CLS] row, summing to 1)."""
        return self._cls_saliency(hidden_states)

    def shrunk(self, rows: int, cols: int) -> tuple[int, int]:
        """The crop grid the language model sees, from the unpadded one (LLaVA-NeXT: the same)."""
        return rows, cols

    def image_parts(self, packed: torch.Tensor, size: tuple[int, int], per_pass: torch.Tensor | None, first_pass: int) -> Visual:
        """One image's packed rows: its segments, separator mask, saliency over its visual tokens and tower passes."""
        side = self._side()
        base = side * side
        if int(packed.shape[0]) == base + 1:  # one view (no crops): the base and one newline
            sep = torch.zeros(base + 1, dtype=torch.bool)
            sep[-1] = True
            return Visual(packed, [("image", (side, side))], sep, None if per_pass is None else per_pass[first_pass], 1)
        nph, npw, rs, cs = self.crop_layout(size)
        rows, cols = self.shrunk(rs.stop - rs.start, cs.stop - cs.start)
        if base + rows * (cols + 1) != int(packed.shape[0]):
            raise ValueError(f"{self.name}: an image of {size[0]}x{size[1]} px packed into {packed.shape[0]} rows, expected {base + rows * (cols + 1)}")
        sep = torch.zeros(rows, cols + 1, dtype=torch.bool)
        sep[:, -1] = True
        sep = torch.cat([torch.zeros(base, dtype=torch.bool), sep.flatten()])
        sal = None
        if per_pass is not None:
            crops = per_pass[first_pass + 1 : first_pass + 1 + nph * npw].reshape(nph, npw, side, side).permute(0, 2, 1, 3).reshape(nph * side, npw * side)
            crops = crops[rs, cs]
            if crops.shape != (rows, cols):  # shrunk like the features (bilinear)
                crops = torch.nn.functional.interpolate(crops[None, None], [rows, cols], mode="bilinear")[0, 0]
            sal = torch.cat([per_pass[first_pass], crops.flatten()])
        return Visual(packed, [("base", (side, side)), ("crops", (rows, cols))], sep, sal, 1 + nph * npw)


class Visual(NamedTuple):
    """One image or video as the language model sees it: its rows (visual tokens and separators, in order),
    its segments ``(kind, grid)``, which rows are separators, its saliency over its visual tokens, its tower passes."""

    rows: torch.Tensor
    segments: list[tuple[str, tuple[int, int]]]
    separators: torch.Tensor
    saliency: torch.Tensor | None
    passes: int
