"""The tiny LLaVA-NeXT, LLaVA-OneVision and InternVL checkpoints (tokenbench.fixtures_families) are self-consistent.

Each reloads by path (``AutoModelForImageTextToText``; the processor through
``load_processor``, which is ``AutoProcessor`` where torchvision is installed), the stock
``generate`` runs on one wide image and on two images in one prompt, and the processor
inserts exactly as many placeholder tokens as ``model.model.get_image_features``
returns rows (newline rows included). The expected counts are worked out by hand from
the released rules, so AnyRes, unpadding, AnyRes-max shrinking, tiling and the
thumbnail are known to have happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tokenbench.processors import load_processor
from tokenbench.testing import tiny_internvl_checkpoint, tiny_llava_next_checkpoint, tiny_llava_onevision_checkpoint

BUILDERS = {"llava_next": tiny_llava_next_checkpoint, "llava_onevision": tiny_llava_onevision_checkpoint, "internvl": tiny_internvl_checkpoint}


def image(width: int, height: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


@pytest.fixture(scope="module", params=list(BUILDERS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, Any]:
    from transformers import AutoModelForImageTextToText

    path = BUILDERS[request.param](tmp_path_factory.mktemp("ckpt") / request.param)
    return request.param, load_processor(path), AutoModelForImageTextToText.from_pretrained(path).eval()


def prompt(processor: Any, n_images: int) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": "what colour is the shape ?"}]
    return str(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))


def feature_rows(family: str, model: Any, inputs: Any) -> list[int]:
    """Rows of ``get_image_features`` per image (per tile for InternVL, whose output is one tensor)."""
    with torch.no_grad():
        if family == "internvl":
            out = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
            return [int(t.shape[0]) for t in out]
        extra = {"batch_num_images": inputs["batch_num_images"]} if "batch_num_images" in inputs else {}
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True, **extra)
        return [int(t.shape[0]) for t in out.pooler_output]


#: placeholder tokens per image, worked out by hand (see each checkpoint's docstring)
#: llava_next: 4×4 base + crop grid rows × (cols + 1 newline); 64×32 → 1×2 crops (4×8),
#:   64×16 → 1×2 crops unpadded to 2×8, 40×40 → 2×2 crops (8×8)
#: llava_onevision: the same, and 128×128 → 4×4 crops (16×16) shrunk to 12×12 (anyres_max_9)
#: internvl: 4 a tile; 64×32 → 2×1 tiles + thumbnail, 32×96 → 1×3 tiles + thumbnail
WIDE = {"llava_next": 16 + 4 * 9, "llava_onevision": 16 + 4 * 9, "internvl": 3 * 4}
PAIRS = {
    "llava_next": ([(64, 16), (40, 40)], [16 + 2 * 9, 16 + 8 * 9]),
    "llava_onevision": ([(64, 16), (128, 128)], [16 + 2 * 9, 16 + 12 * 13]),
    "internvl": ([(64, 32), (32, 96)], [3 * 4, 4 * 4]),
}


def check(family: str, processor: Any, model: Any, images: list[Any], expected: list[int]) -> None:
    inputs = processor(images=images, text=prompt(processor, len(images)), return_tensors="pt")
    ids = inputs["input_ids"]
    placeholders = int((ids == model.config.image_token_id).sum())
    rows = feature_rows(family, model, inputs)
    assert placeholders == sum(expected), (placeholders, expected)
    assert sum(rows) == placeholders
    if family == "internvl":  # per tile; each image's tokens sit between <img> and </img>
        assert rows == [4] * (sum(expected) // 4)
        tok = processor.tokenizer
        assert int((ids == tok.start_image_token_id).sum()) == int((ids == tok.end_image_token_id).sum()) == len(images)
    else:
        assert rows == expected
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 3


def test_one_wide_image(loaded: tuple[str, Any, Any]) -> None:
    family, processor, model = loaded
    check(family, processor, model, [image(64, 32)], [WIDE[family]])


def test_two_images_in_one_prompt(loaded: tuple[str, Any, Any]) -> None:
    family, processor, model = loaded
    sizes, expected = PAIRS[family]
    check(family, processor, model, [image(w, h, seed=i) for i, (w, h) in enumerate(sizes)], expected)


def test_newline_closes_each_row_of_the_unpadded_grid(tmp_path: Path) -> None:
    """LLaVA-NeXT, 64×16: base (16 rows), then 2 grid rows of 8 crop tokens, each followed by ``image_newline``."""
    from transformers import AutoModelForImageTextToText

    path = tiny_llava_next_checkpoint(tmp_path / "next")
    processor, model = load_processor(path), AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = processor(images=[image(64, 16)], text=prompt(processor, 1), return_tensors="pt")
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True).pooler_output[0]
    newline = model.model.image_newline
    assert newline.abs().min() > 0
    is_newline = [bool(torch.equal(row, newline)) for row in feats]
    assert [i for i, hit in enumerate(is_newline) if hit] == [16 + 8, 16 + 17]


def test_onevision_multi_image_sample_gets_base_views(tmp_path: Path) -> None:
    """``images=[[a, b]]`` (one sample, two images): each image is its base view and one newline, no crops."""
    from transformers import AutoModelForImageTextToText

    path = tiny_llava_onevision_checkpoint(tmp_path / "ov")
    processor, model = load_processor(path), AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = processor(images=[[image(64, 32), image(128, 128, seed=1)]], text=prompt(processor, 2), return_tensors="pt")
    assert inputs["batch_num_images"].tolist() == [2]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * (16 + 1) == sum(feature_rows("llava_onevision", model, inputs))
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_onevision_video_frames_pooled_2x2_then_one_newline(tmp_path: Path) -> None:
    """4 frames of 4×4 tokens pool to 2×2 each: 16 rows and one ``image_newline``, as many as the processor counts."""
    from transformers import AutoModelForImageTextToText

    path = tiny_llava_onevision_checkpoint(tmp_path / "ov")
    processor, model = load_processor(path), AutoModelForImageTextToText.from_pretrained(path).eval()
    n = processor._get_num_multimodal_tokens(video_sizes=[(4, 32, 32)])["num_video_tokens"][0]
    frames = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.model.get_video_features(pixel_values_videos=frames, return_dict=True).pooler_output
    assert n == feats.shape[1] == 4 * 4 + 1 and torch.equal(feats[0, -1], model.model.image_newline)
    text = f"USER: {processor.video_token * n}\nwhat colour is the shape ? ASSISTANT:"
    ids = processor.tokenizer(text, return_tensors="pt")
    out = model.generate(**ids, pixel_values_videos=frames, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_onevision_processor_video_path(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    path = tiny_llava_onevision_checkpoint(tmp_path / "ov")
    processor = load_processor(path)
    frames = [image(32, 32, seed=k) for k in range(4)]
    inputs = processor(videos=[frames], text="USER: <video>\nwhat colour ? ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 4 * 4 + 1
