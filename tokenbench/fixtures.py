"""Tiny random checkpoints and task files, made on the spot: tests need no download.

- :func:`tiny_llava_checkpoint` and :func:`tiny_qwen2_5_vl_checkpoint` save a randomly
  initialised stock ``transformers`` model with its tokenizer and processor
  (``save_pretrained``), loadable by path like any real checkpoint;
- :func:`word_tokenizer` is the word-level tokenizer they use;
- :func:`write_jsonl_task` writes a small ``jsonl`` task with drawn images;
  :func:`write_multi_image_jsonl_task` and :func:`write_video_jsonl_task` write ones
  whose samples carry several images or a video (frames, or a file written with PyAV).

Import them from :mod:`tokenbench.testing`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = (
    "what colour is the shape object left right of above below how many are there a an "
    "red green blue yellow purple orange circle square triangle diamond yes no zero one two three "
    "four five cat dog picture image this in on and or with which answer question color"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% else %} {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def word_tokenizer(words: list[str] | tuple[str, ...] = WORDS, *, specials: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` with ``<image>``, ``<pad>``, ``<s>``, ``</s>``, ``<unk>``.

    ``specials`` adds named special tokens (``{"video_token": "<video>"}`` gives ``tok.video_token``
    and ``tok.video_token_id``), at the end of the vocabulary: the other ids do not move.
    """
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    extra = dict(specials or {})
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "<image>"] + sorted(set(words) | set(":?.,!\n") | {"USER", "ASSISTANT"})
    vocab = {w: i for i, w in enumerate(tokens + [t for t in dict.fromkeys(extra.values()) if t not in tokens])}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    from tokenizers import decoders

    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", **extra},
        **kwargs,
    )


def tiny_text_config(family: str, tok: Any, layers: int, *, positions: int = 256) -> Any:
    """A 64-wide ``LlamaConfig`` or ``Qwen2Config`` (``family``) over ``tok``'s vocabulary, with its pad, BOS and EOS ids."""
    import transformers

    return getattr(transformers, f"{family}Config")(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def tiny_llava_checkpoint(path: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8, layers: int = 3, feature_layer: int = -2) -> Path:
    """Save a tiny random LLaVA (4×4 visual tokens by default) with its processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path)
    tok = word_tokenizer()
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        text_config=tiny_text_config("Llama", tok, layers, positions=256),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    proc.save_pretrained(path)
    return path


def write_jsonl_task(directory: str | Path, n: int = 6, size: int = 32) -> Path:
    """A ``jsonl`` task of ``n`` coloured-square images; returns the .jsonl path."""
    from PIL import Image, ImageDraw

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    lines = []
    for i in range(n):
        name = list(colours)[i % 3]
        im = Image.new("RGB", (size, size), (128, 128, 128))
        ImageDraw.Draw(im).rectangle([i % 8, i % 5, size // 2 + i % 7, size // 2 + i % 6], fill=colours[name])
        im.save(directory / "images" / f"{i}.png")
        lines.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "what colour is the square?", "answers": [name], "kind": "colour"})
    out = directory / "task.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
#: frames a second of the video files :func:`write_video_jsonl_task` writes
VIDEO_FPS = 4


def _square(size: int, colour: tuple[int, int, int], x: int, y: int) -> Any:
    """A grey ``size``×``size`` image with a half-size square of ``colour`` at (x, y)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(im).rectangle([x, y, x + size // 2, y + size // 2], fill=colour)
    return im


def write_multi_image_jsonl_task(directory: str | Path, n: int = 4, size: int = 32, images_per_sample: int = 2) -> Path:
    """A ``jsonl`` task of ``n`` samples with ``images_per_sample`` coloured-square images each (``"images"``).

    The answer is the colour of the square in the last (right-most) image; neighbouring
    images differ in colour, so a model must tell them apart. Returns the .jsonl path.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    names = list(_COLOURS)
    lines = []
    for i in range(n):
        files = []
        for j in range(images_per_sample):
            name = names[(i + j) % 3]
            _square(size, _COLOURS[name], (i + j) % 8, (i + 2 * j) % 5).save(directory / "images" / f"{i}_{j}.png")
            files.append(f"images/{i}_{j}.png")
        question = "what colour is the square in the right image?"
        lines.append({"id": f"m{i}", "images": files, "question": question, "answers": [name], "kind": "colour"})
    out = directory / "task.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def write_video_jsonl_task(directory: str | Path, n: int = 3, size: int = 32, frames: int = 8, as_file: bool = False) -> Path:
    """A ``jsonl`` task of ``n`` videos of a coloured square moving left to right (``"video"``).

    ``as_file=False``: each video is a list of ``frames`` PNG frames; ``as_file=True``: an
    ``mpeg4`` .mp4 file at :data:`VIDEO_FPS` frames a second (``frames / VIDEO_FPS``
    seconds; a lossless ``png`` .mov where this PyAV cannot encode ``mpeg4``), written
    with PyAV (the ``video`` extra). A file's side is rounded up to even, as the codec
    needs. Returns the .jsonl path.
    """
    directory = Path(directory)
    (directory / "videos").mkdir(parents=True, exist_ok=True)
    side = size + size % 2 if as_file else size
    names = list(_COLOURS)
    lines = []
    for i in range(n):
        name = names[i % 3]
        images = [_square(side, _COLOURS[name], round(k * (side // 2) / max(frames - 1, 1)), i % 5) for k in range(frames)]
        if as_file:
            video: Any = _write_video(directory / "videos" / str(i), images).relative_to(directory).as_posix()
        else:
            (directory / "videos" / str(i)).mkdir(exist_ok=True)
            for k, im in enumerate(images):
                im.save(directory / "videos" / str(i) / f"{k}.png")
            video = [f"videos/{i}/{k}.png" for k in range(frames)]
        lines.append({"id": f"v{i}", "video": video, "question": "what colour is the square?", "answers": [name], "kind": "colour"})
    out = directory / "task.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def _write_video(stem: Path, images: list[Any]) -> Path:
    """``images`` as a video file at :data:`VIDEO_FPS` (``stem.mp4``, else ``stem.mov``); returns its path."""
    import av

    try:
        av.codec.Codec("mpeg4", "w")
        path, codec, pix_fmt = stem.with_suffix(".mp4"), "mpeg4", "yuv420p"
    except (av.error.FFmpegError, ValueError):  # no mpeg4 encoder in this build (UnknownCodecError): lossless png frames
        path, codec, pix_fmt = stem.with_suffix(".mov"), "png", "rgb24"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=VIDEO_FPS)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = pix_fmt
        for im in images:
            container.mux(stream.encode(av.VideoFrame.from_image(im)))
        container.mux(stream.encode())
    return path


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_5_vl_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    layers: int = 3,
    depth: int = 4,
    fullatt: tuple[int, ...] = (1, 2),
    patch_size: int = 4,
    window_size: int = 16,
    min_pixels: int = 8 * 8,
    max_pixels: int = 64 * 64,
) -> Path:
    """Save a tiny random Qwen2.5-VL (model, word tokenizer with Qwen's special tokens, image processor, chat template).

    A 4-pixel patch and 2×2 merge make one visual token per 8×8 pixels: a 48×32 (w×h) image
    gives a 4×6 token grid. ``window_size`` 16 puts 2×2 merged tokens in a window, so the
    vision tower's window reordering is not the identity. Without torchvision (which
    Qwen's video processor needs) the processor is saved piece by piece, in the files
    ``Qwen2_5_VLProcessor.save_pretrained`` writes for its tokenizer and image processor.
    """
    vision = dict(
        depth=depth,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=window_size,
        out_hidden_size=64,
        fullatt_block_indexes=list(fullatt),
        initializer_range=0.1,
    )
    return _tiny_qwen_checkpoint(path, "Qwen2_5_VL", vision, seed=seed, layers=layers, patch_size=patch_size, min_pixels=min_pixels, max_pixels=max_pixels)


def tiny_qwen2_vl_checkpoint(
    path: str | Path, *, seed: int = 0, layers: int = 3, depth: int = 3, patch_size: int = 4, min_pixels: int = 8 * 8, max_pixels: int = 64 * 64
) -> Path:
    """Save a tiny random Qwen2-VL: as :func:`tiny_qwen2_5_vl_checkpoint`, with Qwen2-VL's full-attention tower (width 32, MLP ratio 2)."""
    vision = dict(
        depth=depth,
        embed_dim=32,
        hidden_size=64,
        mlp_ratio=2,
        num_heads=2,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        initializer_range=0.1,
    )
    return _tiny_qwen_checkpoint(path, "Qwen2VL", vision, seed=seed, layers=layers, patch_size=patch_size, min_pixels=min_pixels, max_pixels=max_pixels)


def _tiny_qwen_checkpoint(
    path: str | Path, family: str, vision: dict[str, Any], *, seed: int, layers: int, patch_size: int, min_pixels: int, max_pixels: int
) -> Path:
    """The tiny Qwen-VL checkpoint of ``family`` (``Qwen2VL``, ``Qwen2_5_VL``: the ``transformers`` class prefix)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS) | set(":?.,!") | {"user", "assistant", "system"}))}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.add_special_tokens(specials)
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=QWEN_CHAT_TEMPLATE,
    )

    def ids(token: str) -> int:
        ident = tok.convert_tokens_to_ids(token)
        if not isinstance(ident, int):
            raise TypeError(f"{token!r} is not one token")
        return ident

    torch.manual_seed(seed)
    cfg = getattr(transformers, f"{family}Config")(
        vision_config=vision,
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
            initializer_range=0.1,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = getattr(transformers, f"{family}ForConditionalGeneration")(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    ip = Qwen2VLImageProcessorPil(patch_size=patch_size, temporal_patch_size=2, merge_size=2, min_pixels=min_pixels, max_pixels=max_pixels)
    try:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        video = Qwen2VLVideoProcessor(patch_size=patch_size, temporal_patch_size=2, merge_size=2)
        processor = getattr(transformers, f"{family}Processor")
        processor(image_processor=ip, tokenizer=tok, video_processor=video, chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(path)
    except ImportError:  # no torchvision: save what the processor is made of
        tok.save_pretrained(path)
        ip.save_pretrained(path)
        (path / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
        (path / "processor_config.json").write_text(json.dumps({"processor_class": f"{family}Processor"}, indent=2) + "\n")
    return path
