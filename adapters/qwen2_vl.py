"""Qwen2-VL adapter: any ``Qwen2VLForConditionalGeneration`` checkpoint, stock ``transformers``.

The base of the Qwen vision-language family here: :class:`~tokenbench.adapters.qwen2_5_vl.Qwen2_5_VLAdapter`
adds only the vision tower's windowed attention.

Visual tokens are the merged tokens after the vision tower's patch merger (one per
``m × m`` patches, ``m = spatial_merge_size``), in the order the language model sees
them: the image placeholders (``<|image_pad|>``) and the video placeholders
(``<|video_pad|>``) together.

Segments. A sample may hold several images and a video (the chat template puts the
images first, then the video, then the text). Each image is one segment
``("image", (h/m, w/m))`` from its ``image_grid_thw`` (``source`` = the image's index in
the sample). A video is split by the tower into temporal patches of
``temporal_patch_size`` (2) frames; its merged tokens are temporal-major (every
temporal patch's ``h/m × w/m`` grid, row-major, one after another, as the stock
``get_video_features`` returns them and ``get_rope_index`` numbers them), so it gives
one ``("frame", (h/m, w/m))`` segment per temporal patch (``source`` = the number of the
sample's images, the video's index after them). Segments follow the order of the
visual tokens in the sequence. A sample of one segment keeps that segment's grid;
otherwise its grid is ``(1, N)``. ``vision_inputs``: one ``(t, h, w)`` patch grid (as
in ``*_grid_thw``) per image and per video, in order; FLOPs sum the tower and merger
over them. Budgets resolve per sample.

Video frames: a video file is sampled at :attr:`video_fps` (1) frames per second, at
most :attr:`video_frames` (16), evenly spaced; a frame list is taken as already sampled
at :attr:`video_fps` (:meth:`tokenbench.Sample.load_video`). The stock processor pads
the frame count to a multiple of ``temporal_patch_size`` by repeating the last frame.

Encoder saliency (the tower has no [CLS] token): for every merged token, the mean
attention its patches receive in the saliency block, the tower's last block (every
Qwen2-VL block attends over the whole of each attention span). That block's input,
rotary tables and span boundaries (``cu_seqlens``) are captured by a forward pre-hook
during the normal (SDPA) vision forward; q and k are recomputed from its ``norm1`` and
``qkv`` with the tower's own rotary application; ``softmax(q·kᵀ·scale)`` over each
span's patches is averaged over heads and over all query rows of that span (so each
span's patch saliencies sum to 1), then averaged over the ``m²`` patches of each merged
token. A span is what the tower attends over: an image, or one temporal patch of a
video (the stock ``cu_seqlens`` split a video per temporal patch, and so the tower
never attends across them). So each ``image`` and each ``frame`` segment's saliencies
sum to ``1/m²``. The same rule as the Qwen2.5-VL adapter's, whose last full-attention
block this is.

Positions: the 3-D M-RoPE ids (temporal, height, width) are computed once for the
whole unpruned, left-padded batch by the stock ``get_rope_index`` (images and videos,
Qwen2.5-VL's ``second_per_grid_ts`` passed through); kept tokens keep theirs, merged
tokens take their donor's. Decoding continues at the last prompt position + 1 on all
three axes, which equals the stock ``generate`` (text position + ``rope_deltas``, i.e.
the prompt's largest id + 1) when the prompt's last (text) id is its largest: always
after images, and after a video unless its temporal ids (Qwen2.5-VL: spaced by
``tokens_per_second × second_per_grid_ts``) outrun the text that follows it (a long
video before a short question), where the stock model continues after the video's
largest temporal id instead.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from tokenbench import (
    DecoderAdapter,
    DecoderParts,
    EncodedBatch,
    ModelLoadError,
    PluginError,
    TokenCounts,
    load_pretrained,
    mark_phase,
    stack_segments,
    torch_dtype,
)
from tokenbench.adapters.qwen_processor import IMAGE, VIDEO, ImageOnlyProcessor, load_processor

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
    #: a sample may hold a video; a video file is sampled at 1 frame a second, at most 16 frames
    takes_video = True
    video_fps: ClassVar[float | None] = 1.0
    video_frames: ClassVar[int] = 16
    #: whether the stock ``get_rope_index`` spaces a video's temporal ids by its seconds per
    #: temporal patch (``second_per_grid_ts``, Qwen2.5-VL): the processor then gives
    #: ``temporal_patch_size / video_fps`` per video
    video_timestamps: ClassVar[bool] = False

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        cfg = model.config
        if "sliding_attention" in (getattr(cfg.text_config, "layer_types", None) or []):
            raise ModelLoadError(f"{source}: sliding-window decoder layers (use_sliding_window) are not supported")
        self.image_token_id = cfg.image_token_id
        self.video_token_id = cfg.video_token_id
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
        """(vision tower without merger, patch merger) multiply-adds of the sample's images and videos.

        One term per ``(t, h, w)`` patch grid of ``counts.vision_inputs``, each traced once;
        none recorded: one image of ``counts.grid``.
        """
        inputs = counts.vision_inputs or ((1, counts.grid[0] * self.merge, counts.grid[1] * self.merge),)
        tower = merger = 0
        for t, h, w in inputs:
            a, b = self._input_macs(int(t), int(h), int(w))
            tower, merger = tower + a, merger + b
        return tower, merger

    def _input_macs(self, t: int, h: int, w: int) -> tuple[int, int]:
        """(tower without merger, merger) multiply-adds of one image or video of ``t × h × w`` patches."""
        visual, vcfg = self.model.model.visual, self.model.config.vision_config
        param = next(visual.parameters())
        pixels = torch.zeros(t * h * w, vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size**2, dtype=param.dtype, device=param.device)
        thw = torch.tensor([[t, h, w]], device=param.device)
        tower = self.meter.count(("vision", t, h, w), visual, (pixels,), {"grid_thw": thw})
        patches = torch.zeros(t * h * w, self.tower_width(vcfg), dtype=param.dtype, device=param.device)
        merger = self.meter.count(("projector", t, h, w), visual.merger, (patches,))
        return tower - merger, merger

    def processor_inputs(self, images: Sequence[Sequence[Any]], videos: Sequence[Sequence[Any]], texts: Sequence[str]) -> Mapping[str, Any]:
        """The processor's output; a video's frames are taken as sampled at :attr:`video_fps` (Qwen2.5-VL: ``second_per_grid_ts``)."""
        kwargs: dict[str, Any] = {"images": [im for ims in images for im in ims] or None}
        clips = [list(v) for v in videos if v]
        if clips:
            kwargs["videos"] = clips
            if self.video_timestamps and self.video_fps is not None:
                if isinstance(self.processor, ImageOnlyProcessor):
                    kwargs["fps"] = self.video_fps
                else:  # the stock processor reads the frames' rate from their metadata
                    kwargs["video_metadata"] = [{"total_num_frames": len(c), "fps": self.video_fps, "frames_indices": list(range(len(c)))} for c in clips]
        return self.processor(text=list(texts), return_tensors="pt", padding=True, **kwargs)

    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> EncodedBatch:
        """Merged visual tokens in place of the image and video placeholders, segments per image and temporal patch, stock 3-D M-RoPE positions."""
        dev = self.device
        ids = inputs["input_ids"].to(dev)
        attn = inputs["attention_mask"].to(dev).bool()
        is_img, is_vid = ids == self.image_token_id, ids == self.video_token_id
        img_thw, vid_thw = (inputs[k].to(dev) if inputs.get(k) is not None else None for k in ("image_grid_thw", "video_grid_thw"))
        mm = inputs.get("mm_token_type_ids")
        mm = (is_img.int() * IMAGE + is_vid.int() * VIDEO) if mm is None else mm.to(dev)
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        img_feats, img_sal = self.encode_images(inputs["pixel_values"].to(dev), img_thw, saliency=saliency) if img_thw is not None else ([], None)
        vid_feats, vid_sal = self.encode_videos(inputs["pixel_values_videos"].to(dev), vid_thw, saliency=saliency) if vid_thw is not None else ([], None)
        extra = {"second_per_grid_ts": inputs["second_per_grid_ts"].to(dev)} if inputs.get("second_per_grid_ts") is not None else {}
        pos, _ = self.model.model.get_rope_index(ids, mm, image_grid_thw=img_thw, video_grid_thw=vid_thw, attention_mask=attn.long(), **extra)  # [3,B,S]
        thws = {IMAGE: [] if img_thw is None else img_thw.tolist(), VIDEO: [] if vid_thw is None else vid_thw.tolist()}
        feats = {IMAGE: img_feats, VIDEO: vid_feats}
        sals = {IMAGE: img_sal, VIDEO: vid_sal}
        m = self.merge
        per_feats, per_sal, segments, used = [], [], [], []
        for order in self.visual_order(mm, attn, feats):
            images = sum(1 for kind, _ in order if kind == IMAGE)
            parts: list[tuple[str, tuple[int, int], int]] = []
            seen = {IMAGE: 0, VIDEO: 0}
            for kind, k in order:
                t, h, w = thws[kind][k]
                grid = (h // m, w // m)
                parts += [("image", grid, seen[IMAGE])] if kind == IMAGE else [("frame", grid, images + seen[VIDEO])] * t
                seen[kind] += 1
            per_feats.append(torch.cat([feats[kind][k] for kind, k in order]) if order else torch.zeros(0, self.text_config.hidden_size, device=dev))
            if saliency:
                per_sal.append(torch.cat([sals[kind][k] for kind, k in order]) if order else torch.zeros(0, device=dev))  # type: ignore[index]
            segments.append(stack_segments(parts))
            used.append(tuple(tuple(int(v) for v in thws[kind][k]) for kind, k in order))
        layout = self.visual_layout(ids, attn, is_img | is_vid, per_feats, pos.permute(1, 2, 0).contiguous())
        grids = [s[0].grid if len(s) == 1 else (1, sum(x.count for x in s)) for s in segments]
        return EncodedBatch(layout, grids, per_sal if saliency else None, segments, used)

    @staticmethod
    def visual_order(mm: torch.Tensor, valid: torch.Tensor, feats: Mapping[int, Sequence[torch.Tensor]]) -> list[list[tuple[int, int]]]:
        """Per sample, its images and videos in sequence order: ``(IMAGE or VIDEO, index in the batch's list)``.

        As the stock ``get_rope_index`` reads them: each run of image (video) placeholders
        is the batch's next image (video); a run must hold that input's merged tokens.
        """
        nxt = {IMAGE: itertools.count(), VIDEO: itertools.count()}
        out = []
        for types, keep in zip(mm.tolist(), valid.tolist()):
            order = []
            for kind, run in itertools.groupby(t for t, v in zip(types, keep) if v):
                if kind in (IMAGE, VIDEO):
                    k, n = next(nxt[kind]), len(list(run))
                    rows = int(feats[kind][k].shape[0]) if k < len(feats[kind]) else 0
                    if n != rows:
                        what = "image" if kind == IMAGE else "video"
                        raise PluginError(f"a run of {n} {what} placeholders, but {what} {k} of the batch gives {rows} merged tokens")
                    order.append((kind, k))
            out.append(order)
        for kind, it in nxt.items():
            if next(it) != len(feats[kind]):
                raise PluginError(f"the prompts' placeholders do not use every {'image' if kind == IMAGE else 'video'} of the batch")
        return out

    @torch.no_grad()
    def encode_images(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, saliency: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per image: the merged visual tokens [N, d] in the language model's order and, if asked, their saliency [N]."""
        return self._encode_visual(pixel_values, grid_thw, saliency=saliency, video=False)

    @torch.no_grad()
    def encode_videos(
        self, pixel_values_videos: torch.Tensor, grid_thw: torch.Tensor, *, saliency: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per video: the merged visual tokens [t·N, d] (temporal-major) and, if asked, their saliency (per temporal patch)."""
        return self._encode_visual(pixel_values_videos, grid_thw, saliency=saliency, video=True)

    def _encode_visual(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, saliency: bool, video: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        visual = self.model.model.visual
        seen: dict[str, Any] = {}

        def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen.update(x=args[0] if args else kwargs["hidden_states"], cu=kwargs["cu_seqlens"], rope=kwargs["position_embeddings"])

        features = self.model.model.get_video_features if video else self.model.model.get_image_features
        hook = visual.blocks[self.saliency_block].register_forward_pre_hook(grab, with_kwargs=True) if saliency else None
        try:
            out = features(pixel_values.to(torch_dtype(self.dtype)), grid_thw, return_dict=True)
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
        for a, b in zip(bounds[:-1], bounds[1:]):  # full attention: one span per image, one per temporal patch of a video
            qs, ks = q[a:b].transpose(0, 1).float(), k[a:b].transpose(0, 1).float()  # [H, n, hd]
            n = b - a
            step = max(1, _CHUNK // (att.num_heads * n))
            for r in range(0, n, step):
                probs = (qs[:, r : r + step] @ ks.transpose(1, 2) * att.scaling).softmax(dim=-1)
                received[a:b] += probs.sum(dim=(0, 1))
            received[a:b] /= att.num_heads * n
        pooled = received.view(-1, visual.spatial_merge_size**2).mean(dim=1)  # merged tokens, the tower's order
        return self.to_language_order(pooled, grid_thw)


def _size(size: Any, *keys: str) -> int | None:
    for key in keys:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value is not None:
            return int(value)
    return None
