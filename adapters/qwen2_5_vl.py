"""Qwen2.5-VL adapter: any ``Qwen2_5_VLForConditionalGeneration`` checkpoint, stock ``transformers``.

Everything as :class:`~tokenbench.adapters.qwen2_vl.Qwen2VLAdapter` (merged visual
tokens, per-image grids, the stock 3-D M-RoPE positions, received-attention saliency),
except what the windowed vision tower and the timed video positions change:

- the saliency block is the last full-attention block
  (``vision_config.fullatt_block_indexes[-1]``), where each image's patches attend over
  the whole image;
- the tower works in window order: merged-token values are put back into the language
  model's row-major order with ``argsort(window_index)``, exactly as the stock forward
  reorders the merger output;
- the blocks' width is ``vision_config.hidden_size`` (Qwen2-VL: ``embed_dim``);
- a video's temporal position ids are spaced by ``tokens_per_second ×
  second_per_grid_ts`` in the stock ``get_rope_index``: the processor gives
  ``second_per_grid_ts = temporal_patch_size / video_fps`` per video (the frames are
  taken as sampled at :attr:`~Qwen2VLAdapter.video_fps`, 1 frame a second), and
  :meth:`~Qwen2VLAdapter.encode` passes it through.

The tower's full-attention blocks attend over each image, and over each temporal patch
of a video (the stock ``cu_seqlens``); window order keeps every temporal patch's tokens
together, so the saliency rule (per attention span) is the Qwen2-VL adapter's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tokenbench.adapters.qwen2_vl import ImageOnlyProcessor, Qwen2VLAdapter, load_processor

__all__ = ["ImageOnlyProcessor", "Qwen2_5_VLAdapter", "load_processor"]


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    name = "qwen2_5_vl"
    description = "Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration), last full-attention-block saliency, 3-D M-RoPE"
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    hf_class: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    modeling: ClassVar[str] = "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl"
    video_timestamps: ClassVar[bool] = True

    @staticmethod
    def saliency_block_index(vision_config: Any) -> int:
        """The last full-attention block (the others attend within windows)."""
        return int(list(vision_config.fullatt_block_indexes)[-1])

    @staticmethod
    def tower_width(vision_config: Any) -> int:
        return int(vision_config.hidden_size)

    def to_language_order(self, merged: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Window order to the language model's row-major order, as the stock forward reorders the merger output."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        window_index, _ = get_vision_window_index(grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        return merged[torch.argsort(window_index.to(merged.device))]
