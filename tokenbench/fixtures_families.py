"""Tiny random checkpoints of three more families, made on the spot: tests need no download.

- :func:`tiny_llava_next_checkpoint`: LLaVA-NeXT (CLIP + Llama), AnyRes crops, unpadding, ``image_newline``;
- :func:`tiny_llava_onevision_checkpoint`: LLaVA-OneVision (SigLIP + Qwen2), AnyRes-max, video pooling;
- :func:`tiny_internvl_checkpoint`: InternVL (InternViT + Qwen2), dynamic tiles, thumbnail, pixel shuffle.

Each saves a randomly initialised stock ``transformers`` model with its processor
(``save_pretrained``), loadable by path like a real checkpoint, with the word tokenizer
of :mod:`tokenbench.fixtures`. The image processors are the PIL ones (no torchvision).
Import them from :mod:`tokenbench.testing`.

Without torchvision, ``transformers`` can neither build nor load the stock
LLaVA-OneVision and InternVL processors (their video processors need it): they are
built through :func:`tokenbench.processors.without_video_check`, and
:func:`tokenbench.load_processor` loads a saved one (``AutoProcessor`` where
torchvision is installed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenbench.fixtures import CHAT_TEMPLATE, tiny_text_config, word_tokenizer
from tokenbench.processors import without_video_check

Pinpoints = tuple[tuple[int, int], ...]


def _chat_template(image: str) -> str:
    """:data:`tokenbench.fixtures.CHAT_TEMPLATE` with ``image`` for an image item and ``<video>`` for a video item."""
    return CHAT_TEMPLATE.replace(
        "{% if item['type'] == 'image' %}<image>\n{% else %}",
        "{% if item['type'] == 'image' %}" + image + "\n{% elif item['type'] == 'video' %}<video>\n{% else %}",
    )


def _save(model: Any, processor: Any, tok: Any, path: Path, video: dict[str, Any] | None = None) -> Path:
    """Set the generation EOS and pad ids, save ``model`` and ``processor`` under ``path``; return ``path``.

    A processor built without its video processor (``None``: no torchvision) is saved as
    ``save_pretrained`` would, with ``video`` as the video processor's configuration.
    """
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    if getattr(processor, "video_processor", ...) is None:
        tok._set_processor_class(type(processor).__name__)
        tok.save_pretrained(path)
        (path / "chat_template.jinja").write_text(processor.chat_template)
        config = {**processor.to_dict(), "video_processor": video}
        (path / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    else:
        processor.save_pretrained(path)
    return path


def tiny_llava_next_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    layers: int = 3,
    image_size: int = 32,
    patch_size: int = 8,
    grid_pinpoints: Pinpoints = ((32, 64), (64, 32), (64, 64)),
) -> Path:
    """Save a tiny random LLaVA-NeXT (CLIP tower, Llama text model) with its processor.

    AnyRes as in the release: the ``image_size`` base view (``(image_size/patch_size)²``
    tokens, 4×4 by default), then the crops of the best ``grid_pinpoints`` resolution
    (``(height, width)``) as one grid, unpadded to the image's aspect ratio, with
    ``image_newline`` (random, non-zero) after each of its rows. A 64×16 (w×h) image is
    a 1×2 crop grid of 4×8 tokens unpadded to 2×8. Feature layer -2, strategy
    ``"default"`` (the [CLS] token is dropped).
    """
    import torch
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    path = Path(path)
    tok = word_tokenizer()
    pinpoints = [list(p) for p in grid_pinpoints]
    torch.manual_seed(seed)
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        text_config=tiny_text_config("Llama", tok, layers, positions=1024),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(image_size // patch_size) ** 2,
    )
    model = LlavaNextForConditionalGeneration(cfg).eval()
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return _save(model, processor, tok, path)


def tiny_llava_onevision_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    layers: int = 3,
    image_size: int = 32,
    patch_size: int = 8,
    grid_pinpoints: Pinpoints = ((32, 32), (32, 64), (64, 32), (64, 64), (128, 128)),
    vision_aspect_ratio: str = "anyres_max_9",
) -> Path:
    """Save a tiny random LLaVA-OneVision (SigLIP tower, Qwen2 text model) with its processor.

    AnyRes-max as in the release: the base view (4×4 tokens by default, SigLIP has no
    [CLS]: strategy ``"full"``, feature layer -1), then the unpadded crop grid with
    ``image_newline`` after each row, shrunk (bilinear) when it holds more than
    ``1.1² × 9`` base views: the 128×128 pinpoint (a 4×4 crop grid, 16×16 tokens)
    becomes 12×12. Several images in one sample (``images=[[a, b]]``) get the base view
    and one newline each. A video frame is pooled 2×2 (4×4 → 2×2 tokens), with one
    newline after the last frame. The video processor is saved too; it is built without
    torchvision, but processing a video needs it.
    """
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    path = Path(path)
    tok = word_tokenizer(specials={"video_token": "<video>"})
    pinpoints = [list(p) for p in grid_pinpoints]
    torch.manual_seed(seed)
    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vision_use_head=False,
        ),
        text_config=tiny_text_config("Qwen2", tok, layers, positions=1024),
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
        projector_hidden_act="gelu",
    )
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    side = {"height": image_size, "width": image_size}
    # without torchvision the stock class cannot check its video processor's class: skip that one check
    processor = without_video_check(LlavaOnevisionProcessor)(
        image_processor=LlavaOnevisionImageProcessorPil(size=side, image_grid_pinpoints=pinpoints),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=side),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
        chat_template=_chat_template("<image>"),
    )
    return _save(model, processor, tok, path)


INTERNVL_SPECIALS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def tiny_internvl_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    layers: int = 3,
    image_size: int = 32,
    patch_size: int = 8,
    max_patches: int = 6,
) -> Path:
    """Save a tiny random InternVL (InternViT tower, Qwen2 text model) with its processor.

    Dynamic tiles as InternVL3: the image is resized to the tile grid (at most
    ``max_patches`` tiles of ``image_size``) whose aspect ratio is closest to its own,
    the tiles are taken row by row, and a thumbnail (the whole image at ``image_size``)
    comes last when there is more than one tile. A tile is ``(image_size/patch_size)²``
    patches (4×4 by default), [CLS] dropped, pixel-shuffled 2×2 into one token
    (downsample ratio 0.5): 4 ``<IMG_CONTEXT>`` tokens a tile, between ``<img>`` and
    ``</img>``. A 64×32 (w×h) image is 2 tiles and the thumbnail: 12 tokens. The
    class token and position embeddings, zero at initialisation, are drawn at random.
    InternVL's video processor module imports torchvision: without it, the processor is
    built and saved with no video processor and its settings written by hand.
    """
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, InternVLVisionConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    path = Path(path)
    tok = word_tokenizer(specials=INTERNVL_SPECIALS)
    tokens_per_tile = (image_size // patch_size // 2) ** 2
    torch.manual_seed(seed)
    cfg = InternVLConfig(
        vision_config=InternVLVisionConfig(
            image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        text_config=tiny_text_config("Qwen2", tok, layers, positions=1024),
        image_token_id=tok.context_image_token_id,
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = InternVLForConditionalGeneration(cfg).eval()
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():
        embeddings.cls_token.normal_(std=0.02)
        embeddings.position_embeddings.normal_(std=0.02)
    ip = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    video_config = {"size": {"height": image_size, "width": image_size}, "image_mean": ip.image_mean, "image_std": ip.image_std}
    try:
        from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

        video = InternVLVideoProcessor(**video_config)
    except ImportError:  # the module imports torchvision
        video = None
    # without torchvision the stock class cannot check its video processor's class: skip that one check
    processor = without_video_check(InternVLProcessor)(
        image_processor=ip, tokenizer=tok, video_processor=video, image_seq_length=tokens_per_tile, chat_template=_chat_template("<IMG_CONTEXT>")
    )
    return _save(model, processor, tok, path, {**video_config, "video_processor_type": "InternVLVideoProcessor"})
