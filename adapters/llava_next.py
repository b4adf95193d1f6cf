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
from typing import Any

import torch

from tokenbench import EncodedBatch, Segment, TokenCounts, load_pretrained, mark_phase, torch_dtype
from tokenbench.adapters.llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    name = "llava_next"
    description = "LLaVA-NeXT (LlavaNextForConditionalGeneration): AnyRes base + unpadded crops with image_newline, CLIP [CLS] saliency, 1-D RoPE"
    family = "llava"
    model_types = ("llava_next",)
    default_prompt = None

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
        patches = self._side() ** 2 + (0 if self.select_strategy == "default" else 1)
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
        pixels = inputs["pixel_values"].to(self.device, torch_dtype(self.dtype))
        sizes = inputs["image_sizes"].to(self.device)
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        img = self.model.model.get_image_features(
            pixel_values=pixels,
            image_sizes=sizes,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=saliency or None,
            return_dict=True,
        )
        packed = list(img.pooler_output)  # per image [L_i, d]: base, then crop rows with newlines
        cls = self._cls_saliency(img.hidden_states) if saliency else None  # [passes, h*w]
        side = self._side()
        rows_per_sample = (ids == self.image_token_id).sum(dim=1).tolist()
        per_image: list[tuple[list[tuple[str, tuple[int, int]]], torch.Tensor, torch.Tensor | None, int]] = []
        first_pass = 0
        for i, size in enumerate(sizes.tolist()):
            segs, sep, sal, passes = self._image_parts(packed[i], size, side, None if cls is None else cls, first_pass)
            per_image.append((segs, sep, sal, passes))
            first_pass += passes
        feats, seps, sals, segments, inputs_used = [], [], [], [], []
        image = 0
        for rows in rows_per_sample:
            parts, used, taken = [], [], 0
            while taken < rows:
                parts.append(image)
                taken += int(packed[image].shape[0])
                image += 1
            feats.append(torch.cat([packed[k] for k in parts]) if parts else packed[0][:0])
            seps.append(torch.cat([per_image[k][1] for k in parts]) if parts else torch.zeros(0, dtype=torch.bool))
            if cls is not None:
                sals.append(torch.cat([per_image[k][2] for k in parts]))  # type: ignore[misc]
            stacked: list[Segment] = []
            start = 0
            for src, k in enumerate(parts):
                for kind, grid in per_image[k][0]:
                    stacked.append(Segment(kind, grid, start, src))
                    start += grid[0] * grid[1]
                used.append((per_image[k][3],))
            segments.append(tuple(stacked))
            inputs_used.append(tuple(used))
        layout = self.visual_layout(ids, attn, ids == self.image_token_id, feats, self.sequential_positions(attn), separators=seps)
        grids = [s[0].grid if len(s) == 1 else (1, sum(x.count for x in s)) for s in segments]
        return EncodedBatch(layout, grids, sals if cls is not None else None, segments, inputs_used)

    def _image_parts(
        self, packed: torch.Tensor, size: list[int], side: int, cls: torch.Tensor | None, first_pass: int
    ) -> tuple[list[tuple[str, tuple[int, int]]], torch.Tensor, torch.Tensor | None, int]:
        """One image's segments (kind, grid), separator mask over its packed rows, saliency over its visual tokens, tower passes."""
        base = side * side
        if int(packed.shape[0]) == base + 1:  # no crops: the base and one newline
            sep = torch.zeros(base + 1, dtype=torch.bool)
            sep[-1] = True
            sal = None if cls is None else cls[first_pass]
            return [("base", (side, side))], sep, sal, 1
        nph, npw, rs, cs = self.crop_layout((int(size[0]), int(size[1])))
        rows, cols = rs.stop - rs.start, cs.stop - cs.start
        if base + rows * (cols + 1) != int(packed.shape[0]):
            raise ValueError(f"{self.name}: an image of {size[0]}x{size[1]} px packed into {packed.shape[0]} rows, expected {base + rows * (cols + 1)}")
        sep = torch.zeros(rows, cols + 1, dtype=torch.bool)
        sep[:, -1] = True
        sep = torch.cat([torch.zeros(base, dtype=torch.bool), sep.flatten()])
        sal = None
        if cls is not None:
            crops = cls[first_pass + 1 : first_pass + 1 + nph * npw].reshape(nph, npw, side, side).permute(0, 2, 1, 3).reshape(nph * side, npw * side)
            sal = torch.cat([cls[first_pass], crops[rs, cs].flatten()])
        return [("base", (side, side)), ("crops", (rows, cols))], sep, sal, 1 + nph * npw
