"""Analytic multiply-add counts from a model config — no weights, no torch.

Every function returns **multiply-adds** (MACs); tokenbench reports
``FLOPs = 2 × MACs`` (see :data:`tokenbench.flops.FLOPS_CONVENTION`). Only
matrix products are counted: projections, attention scores and weighted
values, FFN matrices, convolutions. Norms, activations, softmax, rotary
embeddings and biases are not (biases, e.g. Qwen2's q/k/v biases, are additions,
not multiply-adds). Causal masking is not discounted: a prefill of ``n`` tokens
counts ``n × n`` attention scores, as fvcore does on the traced matmul/SDPA.

Configs may be plain dicts (the JSON files in ``tokenbench/model_configs``, or
``config.to_dict()``) or Hugging Face config objects; a full VLM config is also
accepted where a text or vision config is expected (its ``text_config`` /
``vision_config`` is used).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

__all__ = [
    "available_model_configs",
    "clip_vision_macs",
    "decode_macs_per_token",
    "decoder_layer_macs",
    "fastv_formula",
    "internvl_projector_macs",
    "layer_averaged_tokens",
    "llava_projector_macs",
    "llm_prefill_macs",
    "load_model_config",
    "qwen2_5_vl_vision_macs",
    "qwen2_vl_vision_macs",
    "vision_patches",
    "vision_tower_macs",
]

_MISSING = object()


def _get(config: Any, *names: str, default: Any = _MISSING) -> Any:
    """First of ``names`` present (and not None) in a dict or config object."""
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    if default is _MISSING:
        raise KeyError(f"config has none of {names}")
    return default


def _sub(config: Any, name: str) -> Any:
    """``config.<name>`` for a full VLM config, else the config itself."""
    return _get(config, name, default=config)


# ---------------------------------------------------------------- language model


def decoder_layer_macs(
    hidden: int,
    intermediate: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    n_tokens: int,
    kv_len: int | None = None,
) -> int:
    """MACs of one Llama/Qwen2-style decoder layer on ``n_tokens`` query tokens.

    q and o projections ``n·d·H·hd`` each; k and v projections ``n·d·H_kv·hd``
    each (grouped-query attention); scores ``Q Kᵀ`` and weighted values each
    ``n·kv_len·H·hd`` (every *query* head attends; ``kv_len`` defaults to
    ``n_tokens``, i.e. prefill); SwiGLU FFN with three matrices (gate, up,
    down) ``3·n·d·m``.

    >>> decoder_layer_macs(64, 128, 4, 2, 16, n_tokens=10)
    381440
    """
    n, d, m = n_tokens, hidden, intermediate
    kv = n if kv_len is None else kv_len
    projections = 2 * n * d * n_heads * head_dim + 2 * n * d * n_kv_heads * head_dim
    attention = 2 * n * kv * n_heads * head_dim
    return projections + attention + 3 * n * d * m


def _text_dims(text_config: Any) -> dict[str, int]:
    cfg = _sub(text_config, "text_config")
    hidden = int(_get(cfg, "hidden_size"))
    heads = int(_get(cfg, "num_attention_heads"))
    return {
        "hidden": hidden,
        "intermediate": int(_get(cfg, "intermediate_size")),
        "n_heads": heads,
        "n_kv_heads": int(_get(cfg, "num_key_value_heads", default=heads)),
        "head_dim": int(_get(cfg, "head_dim", default=hidden // heads)),
        "n_layers": int(_get(cfg, "num_hidden_layers")),
        "vocab": int(_get(cfg, "vocab_size")),
    }


def _check_layers(values: Sequence[int], n_layers: int, what: str) -> None:
    if len(values) != n_layers:
        raise ValueError(f"{what} has {len(values)} entries; the model has {n_layers} layers")


def llm_prefill_macs(text_config: Any, tokens_per_layer: Sequence[int], lm_head_tokens: int = 1) -> int:
    """MACs of a prefill whose layer ``i`` processes ``tokens_per_layer[i]`` tokens.

    Each layer attends over its own tokens (``kv_len = n``); the LM head
    (``vocab × d``) runs on ``lm_head_tokens`` positions — 1 for generation,
    which only needs the last position's logits.
    """
    dims = _text_dims(text_config)
    _check_layers(tokens_per_layer, dims["n_layers"], "tokens_per_layer")
    layers = sum(_layer_macs(dims, n_tokens=int(n)) for n in tokens_per_layer)
    return layers + lm_head_tokens * dims["vocab"] * dims["hidden"]


def _layer_macs(dims: dict[str, int], *, n_tokens: int, kv_len: int | None = None) -> int:
    """:func:`decoder_layer_macs` with the dimensions of a text config (:func:`_text_dims`)."""
    return decoder_layer_macs(dims["hidden"], dims["intermediate"], dims["n_heads"], dims["n_kv_heads"], dims["head_dim"], n_tokens=n_tokens, kv_len=kv_len)


def decode_macs_per_token(text_config: Any, cache_len_per_layer: Sequence[int]) -> int:
    """MACs to decode one token: it attends to ``cache_len + 1`` keys per layer, then the LM head."""
    dims = _text_dims(text_config)
    _check_layers(cache_len_per_layer, dims["n_layers"], "cache_len_per_layer")
    layers = sum(_layer_macs(dims, n_tokens=1, kv_len=int(c) + 1) for c in cache_len_per_layer)
    return layers + dims["vocab"] * dims["hidden"]


def layer_averaged_tokens(tokens_per_layer: Sequence[int]) -> float:
    """Mean number of tokens per layer (the usual "effective token count" of a pruning schedule).

    >>> layer_averaged_tokens([576, 576] + [144] * 30)
    171.0
    """
    if not tokens_per_layer:
        raise ValueError("tokens_per_layer is empty")
    return sum(tokens_per_layer) / len(tokens_per_layer)


def fastv_formula(n_tokens: float, hidden: int, ffn: int, n_layers: int) -> float:
    """FastV's FLOPs estimate ``L × (4nd² + 2n²d + 2ndm)`` (Chen et al., 2024, eq. 5).

    Its unit is one multiply-add counted **once** (half tokenbench's FLOPs) and
    it models a **two**-matrix FFN (``2ndm``), so for a SwiGLU model (three
    matrices, ``3ndm``) it under-counts the FFN by a third; it also ignores
    grouped-query attention and the LM head. Use it only to compare with
    numbers quoted from papers that use it.

    LLaVA-1.5-7B (d=4096, m=11008, L=32):

    >>> round(fastv_formula(576, 4096, 11008, 32) / 1e12, 2)
    2.99
    >>> round(fastv_formula(192, 4096, 11008, 32) / 1e12, 2)
    0.98
    """
    n, d, m = n_tokens, hidden, ffn
    return float(n_layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m))


# ----------------------------------------------------------------- vision towers


def _pair(value: Any) -> tuple[int, int]:
    """``(height, width)`` from an int or a two-item sequence (InternVL's configs list both)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or (height, width), got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def vision_patches(vision_config: Any) -> int:
    """Patch features of one tower pass at the tower's own resolution ([CLS] not counted); sizes may be ints or (height, width).

    >>> vision_patches({"image_size": 448, "patch_size": [14, 14]})
    1024
    """
    cfg = _sub(vision_config, "vision_config")
    (h, w), (ph, pw) = _pair(_get(cfg, "image_size")), _pair(_get(cfg, "patch_size"))
    return (h // ph) * (w // pw)


def vision_tower_macs(
    vision_config: Any,
    image_size: int | Sequence[int] | None = None,
    n_layers: int | None = None,
    *,
    cls_token: bool = True,
) -> int:
    """MACs of a ViT vision tower (CLIP as in LLaVA, SigLIP, InternViT) on one image.

    Patch embedding (a ``p×p`` convolution, ``C·p²·d`` per patch), then
    ``n_layers`` pre-norm layers over ``N`` tokens: q/k/v/o projections
    ``4·N·d²``, attention ``2·N²·d``, a two-matrix GELU MLP ``2·N·d·m``.
    ``N = n_patches + 1`` with a [CLS] token (CLIP, InternViT), ``N = n_patches``
    with ``cls_token=False`` (SigLIP). ``image_size`` and the config's
    ``image_size``/``patch_size`` may be an int or ``(height, width)``, as
    InternVL's configs give them. ``n_layers`` defaults to the config's depth —
    what Hugging Face runs even when LLaVA reads ``hidden_states[-2]`` and
    discards the last layer; pass ``num_hidden_layers - 1`` to count only layers
    needed. A SigLIP attention-pooling head (``vision_use_head``) is not counted:
    the VLMs that use SigLIP build it without one.

    >>> cfg = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "patch_size": 14, "image_size": 28}
    >>> vision_tower_macs(cfg)  # 2×2 patches + [CLS] = 5 tokens
    648448
    >>> vision_tower_macs(cfg, cls_token=False)  # SigLIP-style: 4 tokens
    547840
    >>> vision_tower_macs({**cfg, "patch_size": [14, 14], "image_size": [28, 28]})
    648448
    >>> vision_tower_macs(cfg, image_size=(28, 56), cls_token=False)  # 2×4 patches
    1103872
    """
    cfg = _sub(vision_config, "vision_config")
    d, m = int(_get(cfg, "hidden_size")), int(_get(cfg, "intermediate_size"))
    patch_h, patch_w = _pair(_get(cfg, "patch_size"))
    height, width = _pair(image_size if image_size is not None else _get(cfg, "image_size"))
    channels = int(_get(cfg, "num_channels", default=3))
    layers = int(_get(cfg, "num_hidden_layers") if n_layers is None else n_layers)
    n_patches = (height // patch_h) * (width // patch_w)
    n = n_patches + (1 if cls_token else 0)
    per_layer = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    return n_patches * channels * patch_h * patch_w * d + layers * per_layer


clip_vision_macs = vision_tower_macs


def llava_projector_macs(vision_hidden: int, text_hidden: int, n_tokens: int) -> int:
    """MACs of LLaVA-1.5's two-layer MLP projector (``v→t``, GELU, ``t→t``) on ``n_tokens`` features."""
    return n_tokens * (vision_hidden * text_hidden + text_hidden * text_hidden)


def internvl_projector_macs(vision_hidden: int, text_hidden: int, n_tokens: int, downsample_ratio: float = 0.5) -> int:
    """MACs of InternVL's projector on ``n_tokens`` tokens after the pixel shuffle.

    The pixel shuffle folds each ``s×s`` block of patch features into one token
    ``s²`` times as wide (``s = 1 / downsample_ratio``); the projector is
    LayerNorm(``s²·v``) → Linear(``s²·v → t``) → GELU → Linear(``t → t``), so it
    costs ``n·(s²·v·t + t²)`` (the LayerNorm is not a matrix product).

    InternVL3-8B (InternViT-300M, v = 1024; Qwen2.5-7B, t = 3584), one 448 px tile
    of 32×32 patches → 16×16 = 256 tokens:

    >>> internvl_projector_macs(1024, 3584, 256)
    7046430720
    >>> internvl_projector_macs(8, 16, 4) == 4 * (32 * 16 + 16 * 16)
    True
    """
    scale = round(1 / downsample_ratio)
    if scale < 1 or abs(scale * downsample_ratio - 1) > 1e-9:
        raise ValueError(f"downsample_ratio must be 1/s for an integer s >= 1, got {downsample_ratio}")
    width = vision_hidden * scale * scale
    return n_tokens * (width * text_hidden + text_hidden * text_hidden)


def _window_sizes(grid: int, window: int) -> list[int]:
    return [min(window, grid - start) for start in range(0, grid, window)]


class _QwenPatches(NamedTuple):
    """What every Qwen-VL tower shares: its patch grid, and the MACs of its patch embedding plus merger."""

    grid_h: int
    grid_w: int
    patch: int
    merge: int
    embed_and_merger: int


def _qwen_patches(cfg: Any, image_size: tuple[int, int] | int, width: int, out_hidden: int) -> _QwenPatches:
    """Patch embedding ``C·T·p²·d`` per patch; merger ``(m²d → m²d)`` then ``(m²d → out_hidden)`` on ``N / m²`` tokens."""
    h_px, w_px = (image_size, image_size) if isinstance(image_size, int) else image_size
    patch = int(_get(cfg, "patch_size", "spatial_patch_size"))
    merge = int(_get(cfg, "spatial_merge_size", default=2))
    temporal = int(_get(cfg, "temporal_patch_size", default=2))
    channels = int(_get(cfg, "in_channels", "in_chans", default=3))
    if h_px % (patch * merge) or w_px % (patch * merge):
        raise ValueError(f"image size {h_px}×{w_px} is not a multiple of {patch * merge} pixels")
    gh, gw = h_px // patch, w_px // patch
    n = gh * gw
    merged = merge * merge * width
    merger = (n // (merge * merge)) * (merged * merged + merged * out_hidden)
    return _QwenPatches(gh, gw, patch, merge, n * channels * temporal * patch * patch * width + merger)


def qwen2_5_vl_vision_macs(vision_config: Any, image_size: tuple[int, int] | int = 448) -> int:
    """MACs of the Qwen2.5-VL vision encoder + patch merger on one image (height, width in pixels, multiples of 28).

    Patch embedding: a ``(2, 14, 14)`` Conv3d over the image duplicated to
    ``temporal_patch_size`` frames, ``C·T·p²·d`` per patch. Blocks: fused qkv
    ``3·N·d²`` + proj ``N·d²``, SwiGLU MLP ``3·N·d·m``, attention ``2·Σ w²·d``
    over windows of ``window_size / patch_size`` patches per side (grouped by
    merge units) except in ``fullatt_block_indexes``, where it is ``2·N²·d``.
    Merger: ``(4d → 4d)`` then ``(4d → out_hidden_size)`` on ``N / 4`` tokens.
    """
    cfg = _sub(vision_config, "vision_config")
    d, m = int(_get(cfg, "hidden_size")), int(_get(cfg, "intermediate_size"))
    depth = int(_get(cfg, "depth", "num_hidden_layers"))
    full_blocks = set(_get(cfg, "fullatt_block_indexes", default=range(depth)))
    p = _qwen_patches(cfg, image_size, d, int(_get(cfg, "out_hidden_size")))
    n, merge = p.grid_h * p.grid_w, p.merge
    # windows are laid out on the merged grid, window_size / merge / patch merge units per side
    units = int(_get(cfg, "window_size", default=112)) // merge // p.patch
    windows = [(a * merge) * (b * merge) for a in _window_sizes(p.grid_h // merge, units) for b in _window_sizes(p.grid_w // merge, units)]
    windowed_sq = sum(w * w for w in windows)
    dense = 4 * n * d * d + 3 * n * d * m
    attention = sum(2 * (n * n if i in full_blocks else windowed_sq) * d for i in range(depth))
    return p.embed_and_merger + depth * dense + attention


def qwen2_vl_vision_macs(vision_config: Any, image_size: tuple[int, int] | int = 448) -> int:
    """MACs of the Qwen2-VL vision encoder + patch merger on one image (height, width in pixels, multiples of 28).

    As :func:`qwen2_5_vl_vision_macs`, with Qwen2-VL's tower: width ``embed_dim``, a
    two-matrix MLP ``2·N·d·(mlp_ratio·d)``, full attention ``2·N²·d`` in every block,
    and the merger's output width ``hidden_size`` (the language model's).
    """
    cfg = _sub(vision_config, "vision_config")
    d = int(_get(cfg, "embed_dim"))
    m = int(_get(cfg, "mlp_ratio", default=4)) * d
    depth = int(_get(cfg, "depth", "num_hidden_layers"))
    p = _qwen_patches(cfg, image_size, d, int(_get(cfg, "hidden_size")))
    n = p.grid_h * p.grid_w
    return p.embed_and_merger + depth * (4 * n * d * d + 2 * n * d * m + 2 * n * n * d)


# ----------------------------------------------------------------------- configs


def available_model_configs() -> list[str]:
    """Names accepted by :func:`load_model_config`."""
    folder = resources.files("tokenbench").joinpath("model_configs")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_model_config(name: str) -> dict[str, Any]:
    """A bundled model config (``tokenbench/model_configs/<name>.json``) as a dict.

    >>> load_model_config("llava-1.5-7b")["text_config"]["hidden_size"]
    4096
    """
    names = available_model_configs()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"no model config {name!r}.{hint} Available: {', '.join(names)}")
    text = resources.files("tokenbench").joinpath("model_configs").joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)
