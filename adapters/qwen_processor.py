"""The Qwen-VL processor without torchvision: text, images and video frames, laid out as the stock processor does.

The stock ``Qwen2VLProcessor``/``Qwen2_5_VLProcessor`` needs torchvision for its video
processor, even for images. :func:`load_processor` returns the stock processor where it
can be loaded and an :class:`ImageOnlyProcessor` built from the checkpoint's tokenizer,
image processor and chat template where it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from tokenbench import processors

#: ``mm_token_type_ids`` of image and video placeholders (text is 0)
IMAGE, VIDEO = 1, 2


class ImageOnlyProcessor:
    """A Qwen-VL processor for text with images and videos, built from the checkpoint's
    tokenizer, image processor and chat template, for environments without torchvision
    (which the stock processor's video processor needs).

    It expands each ``<|image_pad|>`` to the image's merged-token count and each
    ``<|video_pad|>`` to the video's, and returns ``mm_token_type_ids`` (1 image, 2 video)
    like the stock one. ``videos``: one list of frames (PIL images of one size) per video.
    Each frame is resized and normalised by the image processor, then the frames are laid
    out in temporal patches exactly as the stock ``Qwen2VLVideoProcessor.patchify`` does:
    the frame count padded to a multiple of ``temporal_patch_size`` by repeating the last
    frame, patches ordered ``(grid_t, h/m, w/m, m, m)``, each ``(C, temporal_patch_size, p, p)``.
    ``fps`` given (the rate the frames were sampled at): ``second_per_grid_ts`` too,
    ``temporal_patch_size / fps`` per video, as Qwen2.5-VL's processor gives.

    What differs from the stock video processor: frames are resized with PIL (the image
    processor's bicubic resize) rather than torchvision, within the image processor's
    pixel limits (``min_pixels``/``max_pixels``) rather than the video processor's own
    (and without its optional per-video pixel cap); it samples no frames itself.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)

    def apply_chat_template(self, conversation: list[dict[str, Any]], add_generation_prompt: bool = False, **_: Any) -> str:
        return str(
            self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt)
        )

    def __call__(
        self,
        images: Any = None,
        text: Sequence[str] = (),
        videos: Sequence[Sequence[Any]] | None = None,
        return_tensors: str = "pt",
        padding: bool = True,
        fps: float | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        unit = self.image_processor.merge_size**2
        vis: dict[str, Any] = {}
        if images is not None and not (isinstance(images, (list, tuple)) and not images):
            vis.update(self.image_processor(images=images, return_tensors=return_tensors))
        if videos:
            vis.update(self.process_videos(videos, fps=fps))
        counts = {
            self.image_token: iter((vis["image_grid_thw"].prod(-1) // unit).tolist() if "image_grid_thw" in vis else []),
            self.video_token: iter((vis["video_grid_thw"].prod(-1) // unit).tolist() if "video_grid_thw" in vis else []),
        }
        split = re.compile(f"({re.escape(self.image_token)}|{re.escape(self.video_token)})")
        expanded = []
        for t in text:
            parts = []
            for part in split.split(t):
                if part in counts:
                    n = next(counts[part], None)
                    if n is None:
                        raise ValueError(f"the text holds more {part} placeholders than inputs were given")
                    part *= int(n)
                parts.append(part)
            expanded.append("".join(parts))
        if any(next(left, None) is not None for left in counts.values()):
            raise ValueError("more images or videos were given than the text has placeholders for")
        enc = dict(self.tokenizer(expanded, return_tensors=return_tensors, padding=padding))
        ids = enc["input_ids"]
        mm = (ids == self.image_token_id).int() * IMAGE + (ids == self.video_token_id).int() * VIDEO
        return {**enc, **vis, "mm_token_type_ids": mm}

    def process_videos(self, videos: Sequence[Sequence[Any]], fps: float | None = None) -> dict[str, torch.Tensor]:
        """``pixel_values_videos`` ``[Σ t·h·w, C·T·p·p]`` and ``video_grid_thw`` (and, with ``fps``, ``second_per_grid_ts``)."""
        ip = self.image_processor
        p, tps = int(ip.patch_size), int(ip.temporal_patch_size)
        pixels, grids = [], []
        for frames in videos:
            frames = list(frames)
            if not frames or len({im.size for im in frames}) != 1:
                raise ValueError(f"a video needs at least one frame, all of one size (got sizes {sorted({im.size for im in frames})})")
            proc = ip(images=frames, return_tensors="pt")
            _, gh, gw = (int(v) for v in proc["image_grid_thw"][0])
            n = gh * gw
            # each frame's patches come as [N, C, T, p, p] with the frame repeated over T: keep one
            per = torch.as_tensor(proc["pixel_values"]).view(len(frames), n, -1, tps, p, p)[:, :, :, 0]  # [F, N, C, p, p]
            if pad := -len(frames) % tps:
                per = torch.cat([per, per[-1:].expand(pad, *per.shape[1:])])
            gt = per.shape[0] // tps
            pixels.append(per.view(gt, tps, n, -1, p, p).permute(0, 2, 3, 1, 4, 5).reshape(gt * n, -1))
            grids.append([gt, gh, gw])
        result = {"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids, dtype=torch.long)}
        if fps is not None:
            result["second_per_grid_ts"] = torch.tensor([tps / fps] * len(grids))
        return result


def load_processor(source: str, **options: Any) -> Any:
    """The checkpoint's ``AutoProcessor``; without torchvision, an :class:`ImageOnlyProcessor`."""
    return processors.load_processor(source, without_torchvision=image_only_processor, **options)


def image_only_processor(source: str, **options: Any) -> ImageOnlyProcessor:
    """An :class:`ImageOnlyProcessor` from the checkpoint's tokenizer, image processor and chat template."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    template = processors.read_chat_template(source) or getattr(tokenizer, "chat_template", None)  # the processor's first, as AutoProcessor
    return ImageOnlyProcessor(tokenizer, AutoImageProcessor.from_pretrained(source, **options), template)
