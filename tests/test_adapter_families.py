"""Equivalence tests for the adapters of several-segment models (LLaVA-NeXT, ...), against stock ``transformers``.

Each family is a tiny random checkpoint saved with its processor and loaded by path.
The samples are a two-image sample (a wide and a square image) and a one-image sample
(a tall image), so a batch of two is left-padded and AnyRes gives each image its own
crop grid. References come from a separately loaded, unmodified model:

- keep-everything equals ``model.generate`` token for token, at batch 1 (the two-image
  sample) and at the default batch (both samples), and its first logits;
- a vision-stage selection equals the stock model fed the prompt embeddings it builds
  itself (captured on the way into its language model) with the unkept visual rows
  removed (separators such as ``image_newline`` stay), at the original positions, and
  at the stock positions of the shortened sequence for ``positions=contiguous``;
- an LLM-stage selection after layer 0 equals the stock model run with forward
  pre-hooks on its later decoder layers that drop the unkept visual rows (and their
  rotary rows), re-run for every generated token without a cache;
- FLOPs equal the analytic count from the config; segments and separators are as
  the image sizes imply; every registered strategy runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenbench import DecoderAdapter, Sample
from tokenbench.budget import FULL, Budget
from tokenbench.flops_analytic import llava_projector_macs, llm_prefill_macs, vision_tower_macs
from tokenbench.registry import get_registry
from tokenbench.strategies.baseline import Baseline
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy

LAYERS = 3
ATOL = 1e-5
STEPS = 5


@dataclass(frozen=True)
class Family:
    name: str
    adapter: Callable[[], type[DecoderAdapter]]
    checkpoint: Callable[..., Path]
    stock_class: str
    #: (width, height) of the two-image sample's images and of the one-image sample's
    sizes: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
    #: the (vision, projector) multiply-adds of one sample from its ``vision_inputs``, checked against the analytic count
    vision_macs: Callable[[Any, tuple[tuple[int, ...], ...]], tuple[int, int]]
    #: the separator embedding among the image placeholders (``image_newline``), if any
    separator: Callable[[Any], torch.Tensor | None]


def _llava_next_adapter() -> type[DecoderAdapter]:
    from tokenbench.adapters.llava_next import LlavaNextAdapter

    return LlavaNextAdapter


def _llava_next_checkpoint(path: Path, **kw: Any) -> Path:
    from tokenbench.fixtures_families import tiny_llava_next_checkpoint

    return tiny_llava_next_checkpoint(path, **kw)


def _clip_passes_macs(stock: Any, vision_inputs: tuple[tuple[int, ...], ...]) -> tuple[int, int]:
    """One CLIP pass per base image and crop: fvcore's count of one stock pass (whose matrix
    products equal the analytic count), and the analytic projector on every pass's patches."""
    from tokenbench.flops import count_macs

    config = stock.config
    v = config.vision_config
    passes = sum(shape[0] for shape in vision_inputs)
    one = count_macs(stock.model.vision_tower, (torch.zeros(1, 3, v.image_size, v.image_size),))
    assert one.matmul_total == vision_tower_macs(v)
    patches = (v.image_size // v.patch_size) ** 2
    return passes * one.total, passes * llava_projector_macs(v.hidden_size, config.text_config.hidden_size, patches)


def _internvl_adapter() -> type[DecoderAdapter]:
    from tokenbench.adapters.internvl import InternVLAdapter

    return InternVLAdapter


def _internvl_checkpoint(path: Path, **kw: Any) -> Path:
    from tokenbench.testing import tiny_internvl_checkpoint

    return tiny_internvl_checkpoint(path, **kw)


def _internvl_tiles_macs(stock: Any, vision_inputs: tuple[tuple[int, ...], ...]) -> tuple[int, int]:
    """One InternViT pass and one projection per tile: fvcore's counts of one stock pass and one
    projection (their matrix products equal the analytic counts; fvcore adds the norms)."""
    from tokenbench.flops import count_macs

    config = stock.config
    v = config.vision_config
    size, patch = (v.image_size[0], v.patch_size[0]) if isinstance(v.image_size, (list, tuple)) else (v.image_size, v.patch_size)
    tiles = sum(shape[0] for shape in vision_inputs)
    one = count_macs(stock.model.vision_tower, (torch.zeros(1, 3, size, size),))
    assert one.matmul_total == vision_tower_macs(
        {
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "patch_size": patch,
            "image_size": size,
            "num_hidden_layers": v.num_hidden_layers,
        }
    )
    tokens = int((size // patch * config.downsample_ratio) ** 2)
    width, text = int(v.hidden_size / config.downsample_ratio**2), config.text_config.hidden_size
    projector = count_macs(stock.model.multi_modal_projector, (torch.zeros(1, tokens, width),))
    assert projector.matmul_total == tokens * (width * text + text * text)  # LayerNorm, Linear, GELU, Linear
    return tiles * one.total, tiles * projector.total


def _onevision_adapter() -> type[DecoderAdapter]:
    from tokenbench.adapters.llava_onevision import LlavaOnevisionAdapter

    return LlavaOnevisionAdapter


def _onevision_checkpoint(path: Path, **kw: Any) -> Path:
    from tokenbench.testing import tiny_llava_onevision_checkpoint

    return tiny_llava_onevision_checkpoint(path, **kw)


def _siglip_passes_macs(stock: Any, vision_inputs: tuple[tuple[int, ...], ...]) -> tuple[int, int]:
    """One SigLIP pass (no [CLS]) per view or frame, and the projector on every pass's patches."""
    from tokenbench.flops import count_macs

    config = stock.config
    v = config.vision_config
    passes = sum(shape[0] for shape in vision_inputs)
    one = count_macs(stock.model.vision_tower, (torch.zeros(1, 3, v.image_size, v.image_size),))
    patches = (v.image_size // v.patch_size) ** 2
    d, m = v.hidden_size, v.intermediate_size
    per_layer = 4 * patches * d * d + 2 * patches * patches * d + 2 * patches * d * m
    assert one.matmul_total == patches * 3 * v.patch_size**2 * d + v.num_hidden_layers * per_layer
    return passes * one.total, passes * llava_projector_macs(v.hidden_size, config.text_config.hidden_size, patches)


FAMILIES = {
    "llava_next": Family(
        "llava_next",
        _llava_next_adapter,
        _llava_next_checkpoint,
        "LlavaNextForConditionalGeneration",
        (((64, 16), (40, 40)), ((16, 48),)),
        _clip_passes_macs,
        lambda model: model.model.image_newline,
    ),
    "llava_onevision": Family(
        "llava_onevision",
        _onevision_adapter,
        _onevision_checkpoint,
        "LlavaOnevisionForConditionalGeneration",
        (((64, 16), (40, 40)), ((128, 128),)),
        _siglip_passes_macs,
        lambda model: model.model.image_newline,
    ),
    "internvl": Family(
        "internvl",
        _internvl_adapter,
        _internvl_checkpoint,
        "InternVLForConditionalGeneration",
        (((64, 16), (40, 40)), ((16, 48),)),
        _internvl_tiles_macs,
        lambda model: None,
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in one order: references compare at 1e-5
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def ckpt(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family.checkpoint(tmp_path_factory.mktemp("ckpt") / f"tiny-{family.name}", layers=LAYERS)


@pytest.fixture(scope="module")
def adapter(family: Family, ckpt: Path) -> DecoderAdapter:
    ad = family.adapter().load(str(ckpt))
    ad.eos_ids = set()  # a random model: decode exactly max_new_tokens
    return ad


@pytest.fixture(scope="module")
def stock(family: Family, ckpt: Path) -> Any:
    import transformers

    model = getattr(transformers, family.stock_class).from_pretrained(str(ckpt), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="module")
def samples(family: Family) -> list[Sample]:
    from PIL import Image

    rng = np.random.default_rng(0)

    def image(w: int, h: int) -> Any:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    two, one = family.sizes
    return [
        Sample(id="two", image=[image(w, h) for w, h in two], question="what colour is the square in this picture ?", answers=("x",)),
        Sample(id="one", image=image(*one[0]), question="how many circle ?", answers=("x",)),
    ]


def _encode(adapter: DecoderAdapter, group: list[Sample]) -> Any:
    images, videos = adapter.visual_inputs(group)
    texts = [adapter.chat_prompt(s.question, images=len(i)) for s, i in zip(group, images)]
    return adapter.processor_inputs(images, videos, texts)


def _stock_inputs(stock: Any, enc: Any, b: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Sample ``b``'s prompt embeddings and position ids as the stock model builds them, and its ids (padding removed)."""
    seen: dict[str, Any] = {}

    def grab(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.update(embeds=kwargs["inputs_embeds"], pos=kwargs.get("position_ids"))

    hook = stock.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            stock(**enc)
    finally:
        hook.remove()
    valid = enc["attention_mask"][b].bool()
    pos = seen["pos"]
    return seen["embeds"][b, valid], None if pos is None else pos[..., b, valid] if pos.dim() == 3 else pos[b, valid], enc["input_ids"][b, valid]


def _visual_rows(family: Family, stock: Any, embeds: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence indices of the visual tokens, of the separators) among the image placeholders."""
    slots = torch.nonzero(ids == stock.config.image_token_id).squeeze(1)
    sep = family.separator(stock)
    is_sep = torch.zeros(slots.numel(), dtype=torch.bool) if sep is None else (embeds[slots] == sep.to(embeds.dtype)).all(dim=-1)
    return slots[~is_sep], slots[is_sep]


def _greedy(stock: Any, embeds: torch.Tensor, pos: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[int]]:
    """The stock model on ``inputs_embeds`` [S, d] at 1-D positions ``pos`` [S], greedy from its cache at the last position + 1."""
    from transformers import DynamicCache

    cache = DynamicCache(config=stock.config.text_config)
    with torch.no_grad():
        logits = stock(inputs_embeds=embeds[None], position_ids=pos[None], cache=cache, use_cache=True).logits[:, -1]
        first, tokens = logits[0].float(), []
        for step in range(steps):
            tokens.append(int(logits.argmax(-1)))
            logits = stock(input_ids=torch.tensor([[tokens[-1]]]), position_ids=(pos[-1:] + 1 + step)[None], cache=cache, use_cache=True).logits[:, -1]
    return first, tokens


class KeepFixed(Strategy):
    """Vision stage: every third visual token of the sample and the last (across its segments)."""

    name = "keep-fixed"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    @staticmethod
    def indices(n: int) -> torch.Tensor:
        return torch.tensor(sorted(set(range(0, n, 3)) | {n - 1}))

    def select(self, ctx: StageContext) -> Selection:
        return Selection(keep=self.indices(ctx.num_tokens))


class PruneInLLM(KeepFixed):
    """LLM stage after layer 0: every third visual token and the last."""

    name = "prune-in-llm"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.llm(0),)


def test_registered_and_picked_by_model_type(family: Family, ckpt: Path) -> None:
    import tokenbench
    from tokenbench.compare import adapter_for

    registry = tokenbench.get_registry(refresh=True)
    assert family.name in registry.names("adapters")
    assert adapter_for(registry, str(ckpt), None) is family.adapter()


@pytest.mark.parametrize("batch", [1, 2], ids=["two-images-alone", "default-batch"])
def test_baseline_equals_model_generate(adapter: DecoderAdapter, stock: Any, samples: list[Sample], batch: int) -> None:
    group = samples[:batch]
    out = adapter.run(group, [s.question for s in group], Baseline(), FULL, max_new_tokens=STEPS).output
    enc = _encode(adapter, group)
    with torch.no_grad():
        ref = stock(**enc).logits[:, -1].float()
        gen = stock.generate(**enc, max_new_tokens=STEPS, do_sample=False)
    torch.testing.assert_close(out.first_logits, ref, atol=ATOL, rtol=0)
    assert out.tokens == gen[:, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("positions", ["original", "contiguous"])
def test_vision_selection_equals_stock_model_fed_the_kept_embeddings(
    family: Family, adapter: DecoderAdapter, stock: Any, samples: list[Sample], positions: str
) -> None:
    strategy = KeepFixed(positions=positions)
    out, _, setups, _ = adapter.run(samples, [s.question for s in samples], strategy, FULL, max_new_tokens=STEPS)
    enc = _encode(adapter, samples)
    for b, setup in enumerate(setups):
        embeds, pos, ids = _stock_inputs(stock, enc, b)
        visual, separators = _visual_rows(family, stock, embeds, ids)
        assert visual.numel() == setup.num_visual
        keep = KeepFixed.indices(setup.num_visual)
        assert out.kept[b]["vision"] == keep.tolist()
        assert out.tokens_per_layer[b] == [keep.numel()] * LAYERS
        rows = torch.ones(ids.numel(), dtype=torch.bool)
        rows[visual] = False
        rows[visual[keep]] = True
        assert bool(rows[separators].all())  # separators are never dropped
        full_pos = torch.arange(ids.numel()) if pos is None else pos
        kept_pos = full_pos[rows] if positions == "original" else torch.arange(int(rows.sum()))
        first, tokens = _greedy(stock, embeds[rows], kept_pos, STEPS)
        torch.testing.assert_close(out.first_logits[b], first, atol=ATOL, rtol=0)
        assert out.tokens[b] == tokens


def _hooked_logits(stock: Any, embeds: torch.Tensor, survivors: torch.Tensor) -> torch.Tensor:
    """Last-position logits of the stock model on ``inputs_embeds`` with rows ``~survivors`` dropped after decoder layer 0.

    Forward pre-hooks on layers 1.. give each the surviving rows of the hidden states
    and of the rotary tables, and no mask (causal attention over the survivors).
    """
    layers = stock.model.language_model.layers

    def prune(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if hidden.shape[1] == survivors.numel():
            hidden = hidden[:, survivors]
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (cos[:, survivors], sin[:, survivors])
        kwargs["attention_mask"] = None
        return (hidden, *args[1:]), kwargs

    hooks = [layer.register_forward_pre_hook(prune, with_kwargs=True) for layer in layers[1:]]
    try:
        with torch.no_grad():
            return stock(inputs_embeds=embeds[None], use_cache=False).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()


def test_llm_selection_equals_hooked_stock_model(family: Family, adapter: DecoderAdapter, stock: Any, samples: list[Sample]) -> None:
    out, _, setups, _ = adapter.run(samples, [s.question for s in samples], PruneInLLM(), FULL, max_new_tokens=3)
    enc = _encode(adapter, samples)
    embed = stock.get_input_embeddings()
    for b, setup in enumerate(setups):
        embeds, pos, ids = _stock_inputs(stock, enc, b)
        assert pos is None  # 1-D positions 0..S-1, as the stock model numbers them
        visual, _ = _visual_rows(family, stock, embeds, ids)
        keep = KeepFixed.indices(setup.num_visual)
        assert out.tokens_per_layer[b] == [setup.num_visual] + [keep.numel()] * (LAYERS - 1)
        tokens: list[int] = []
        for step in range(3):
            with torch.no_grad():
                seq = torch.cat([embeds, embed(torch.tensor(tokens, dtype=torch.long))]) if tokens else embeds
            survivors = torch.ones(seq.shape[0], dtype=torch.bool)
            survivors[visual] = False
            survivors[visual[keep]] = True
            logits = _hooked_logits(stock, seq, survivors)
            if step == 0:
                torch.testing.assert_close(out.first_logits[b], logits, atol=ATOL, rtol=0)
            tokens.append(int(logits.argmax()))
        assert out.tokens[b] == tokens


def test_flops_equal_the_analytic_count(family: Family, adapter: DecoderAdapter, stock: Any, samples: list[Sample]) -> None:
    from tokenbench.strategies.random_drop import RandomDrop

    for strategy, budget in ((Baseline(), FULL), (RandomDrop(), Budget("count", 7))):
        for r in adapter.generate(samples, [s.question for s in samples], strategy, budget, max_new_tokens=1):
            flops = adapter.flops(r)
            assert flops is not None and r.vision_inputs
            vision, projector = family.vision_macs(stock, r.vision_inputs)
            assert flops["vision"] == 2 * vision
            assert flops["projector"] == 2 * projector
            prefill = llm_prefill_macs(stock.config.text_config, [r.text_tokens + n for n in r.tokens_per_layer])
            assert flops["llm_prefill"] == 2 * prefill


def test_segments_tile_the_visual_tokens_and_are_recorded(adapter: DecoderAdapter, samples: list[Sample]) -> None:
    from tokenbench.strategies.random_drop import RandomDrop

    results = adapter.generate(samples, [s.question for s in samples], RandomDrop(), Budget("count", 9), max_new_tokens=1)
    for sample, r in zip(samples, results):
        assert r.segments, "a multi-segment adapter names its segments"
        assert {s.source for s in r.segments} == set(range(sample.num_images))
        assert sum(s.count for s in r.segments) == r.num_visual
        assert [s.start for s in r.segments] == [sum(x.count for x in r.segments[:i]) for i in range(len(r.segments))]
        assert sum(r.segment_counts["vision"]) == r.tokens_per_layer[0] == 9
        assert r.grid == ((1, r.num_visual) if len(r.segments) > 1 else r.segments[0].grid)


def test_every_registered_strategy_runs(adapter: DecoderAdapter, samples: list[Sample]) -> None:
    registry = get_registry()
    for name in registry.names("strategies"):
        cls = registry.load("strategies", name)
        if cls.needs_ground_truth:
            continue
        results = adapter.generate(samples, [s.question for s in samples], cls(), Budget("count", 12), max_new_tokens=1)
        for r in results:
            final = r.tokens_per_layer[-1]
            assert 0 < final <= r.num_visual, name
            for label, counts in r.segment_counts.items():
                assert len(counts) == len(r.segments), (name, label)


def _per_pass_reference(family: Family, ckpt: Path, adapter: DecoderAdapter, enc: Any) -> torch.Tensor:
    """``[passes, tokens]``: each tower pass's saliency from the eager attention probabilities the stock
    ``get_image_features`` returns (the feature layer's): the [CLS] row (CLIP, InternViT; summed over each
    pixel-shuffled 2×2 group for InternVL) or the mean attention received (SigLIP)."""
    import transformers

    eager = getattr(transformers, family.stock_class).from_pretrained(str(ckpt), dtype=torch.float32, attn_implementation="eager").eval()
    cfg = eager.config
    kwargs = {k: enc[k] for k in ("image_sizes", "batch_num_images") if k in enc}
    with torch.no_grad():
        out = eager.model.get_image_features(pixel_values=enc["pixel_values"], output_attentions=True, return_dict=True, **kwargs)
    layer = cfg.vision_feature_layer if isinstance(cfg.vision_feature_layer, int) else cfg.vision_feature_layer[-1]
    att = out.attentions[layer].float().mean(dim=1)  # [passes, S, S], head-averaged
    if family.name == "llava_onevision":
        return att.mean(dim=1)
    cls = att[:, 0, 1:]
    if family.name == "internvl":
        side = int(cls.shape[1] ** 0.5)
        shuffled = eager.model.pixel_shuffle(cls.view(-1, side, side, 1).expand(-1, side, side, 4).contiguous(), scale_factor=cfg.downsample_ratio)
        return shuffled.sum(dim=-1).flatten(1) / 4  # each patch's value appears 4 times among the channels
    return cls


def test_saliency_equals_eager_attention(family: Family, ckpt: Path, adapter: DecoderAdapter, samples: list[Sample]) -> None:
    enc = _encode(adapter, samples)
    encoded = adapter.encode(enc, saliency=True)
    assert encoded.saliency is not None and encoded.segments is not None
    ref = _per_pass_reference(family, ckpt, adapter, enc)
    first_pass = 0
    for b, segments in enumerate(encoded.segments):
        sal = encoded.saliency[b]
        assert sal.shape[0] == sum(s.count for s in segments)
        for seg in segments:
            part = sal[seg.start : seg.stop]
            if seg.kind in ("base", "image", "tile", "thumbnail"):  # one tower pass each
                torch.testing.assert_close(part, ref[first_pass], atol=1e-5, rtol=0)
                first_pass += 1
            else:  # crops: laid out like the features; each value comes from one of the image's crop passes
                passes = encoded.vision_inputs[b][seg.source][0] - 1  # type: ignore[index]
                crops = ref[first_pass : first_pass + passes].flatten()
                if seg.count <= crops.numel() and family.name == "llava_next":
                    assert bool((part[:, None] - crops[None, :]).abs().min(dim=1).values.max() < 1e-6)
                first_pass += passes
    assert first_pass == ref.shape[0]
