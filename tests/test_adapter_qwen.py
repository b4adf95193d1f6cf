"""Adapter-contract tests for the Qwen-VL family: Qwen2.5-VL and Qwen2-VL (docs/architecture.md, "The contracts").

Every test runs on both families. A tiny random ``Qwen2_5_VLForConditionalGeneration``
(3 decoder layers, a 4-block vision tower with full attention in blocks 1 and 2,
4-pixel patches, 2×2 merge, windows of 2×2 merged tokens) and a tiny
``Qwen2VLForConditionalGeneration`` (3 decoder layers, a 3-block full-attention tower,
the same patches and merge) are saved with their processors and loaded by path.
Images of 48×32 and 24×24 pixels give 4×6 and 3×3 token grids, so a batch of two is
left-padded and (Qwen2.5-VL) the vision tower's window reordering is not the identity.
References are built from a separately loaded, unmodified model:

- keep-everything equals ``model(...)`` logits and 20 ``model.generate`` greedy tokens
  (batch 1 and 2);
- a vision-stage selection equals the stock model on ``inputs_embeds`` with the
  dropped image tokens removed and the original 3-D position ids passed explicitly,
  for prefill and for greedy decoding continued at the last position + 1;
- grids, token counts and fraction budgets are per image; ``max_pixels`` changes them;
- encoder saliency equals the same quantity from eager attention probabilities
  recorded in the saliency block of the vision tower (Qwen2.5-VL: the last
  full-attention block; Qwen2-VL: the last block), mapped to the language model's
  order through the stock merger output;
- an LLM-stage selection equals the stock decoder layers run without a cache, the
  unkept visual rows and their positions dropped after the layer;
- the LLM-stage attention signal equals eager attention probabilities;
- every registered strategy runs.

Several images and a video per sample: a sample of the two test images, and a video
of 4 random 32×24 frames (two temporal patches of a (3, 4) grid), alone, batched with a
one-image sample, and after an image in one sample:

- keep-everything equals ``model.generate`` on the same processor output, token for
  token; segments are one ``image`` per image and one ``frame`` per temporal patch,
  tiling the visual tokens in sequence order (the video numbered after the images);
- a vision-stage selection equals the stock model on ``inputs_embeds`` with the unkept
  visual rows removed at their original 3-D positions (Qwen2.5-VL: timed by
  ``second_per_grid_ts``);
- FLOPs of two images are the sum of the two one-image counts; a video of two temporal
  patches costs two single-patch frames;
- the video pixels equal a transcription of the stock ``Qwen2VLVideoProcessor.patchify``
  of the normalised frames; the video saliency equals eager attention per temporal patch;
- every registered strategy runs on the video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenbench.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from tokenbench.adapters.qwen2_vl import Qwen2VLAdapter
from tokenbench.budget import FULL, Budget
from tokenbench.strategies.baseline import Baseline
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy
from tokenbench.task import Sample
from tokenbench.testing import tiny_qwen2_5_vl_checkpoint, tiny_qwen2_vl_checkpoint

LAYERS = 3
SIZES = ((48, 32), (24, 24))  # (width, height) -> grids (4, 6) and (3, 3)
GRIDS = [(4, 6), (3, 3)]
PROMPTS = ["what colour is the square ?", "how many red circle are there in this picture ?"]
ATOL = 1e-5


@dataclass(frozen=True)
class Family:
    adapter: type[Qwen2VLAdapter]
    checkpoint: Callable[..., Path]
    #: the tower's windowed attention reorders the merged tokens
    windowed: bool

    @property
    def name(self) -> str:
        return self.adapter.name

    def stock_class(self) -> Any:
        import transformers

        return getattr(transformers, self.adapter.hf_class)

    def saliency_block(self, config: Any) -> int:
        v = config.vision_config
        return int(v.fullatt_block_indexes[-1]) if self.windowed else int(v.depth) - 1


FAMILIES = {"qwen2_5_vl": Family(Qwen2_5_VLAdapter, tiny_qwen2_5_vl_checkpoint, True), "qwen2_vl": Family(Qwen2VLAdapter, tiny_qwen2_vl_checkpoint, False)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def ckpt(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family.checkpoint(tmp_path_factory.mktemp("ckpt") / f"tiny-{family.name}", layers=LAYERS)


@pytest.fixture(scope="module")
def adapter(family: Family, ckpt: Path) -> Qwen2VLAdapter:
    ad = family.adapter.load(str(ckpt))
    ad.eos_ids = set()  # a random model: decode exactly max_new_tokens
    return ad


@pytest.fixture(scope="module")
def stock(family: Family, ckpt: Path) -> Any:
    model = family.stock_class().from_pretrained(str(ckpt), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    from PIL import Image

    return [
        Sample(id=f"s{i}", image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), question=q, answers=("x",))
        for i, ((w, h), q) in enumerate(zip(SIZES, PROMPTS))
    ]


def _encode(adapter: Qwen2VLAdapter, samples: list[Sample]) -> dict[str, Any]:
    texts = [adapter.chat_prompt(s.question) for s in samples]
    return adapter.processor(images=[s.load_image() for s in samples], text=texts, return_tensors="pt", padding=True)


class KeepFixed(Strategy):
    """Vision stage: keeps every third token, plus the last one."""

    name = "keep-fixed"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    @staticmethod
    def indices(n: int) -> torch.Tensor:
        return torch.tensor(sorted(set(range(0, n, 3)) | {n - 1}))

    def select(self, ctx: StageContext) -> Selection:
        return Selection(keep=self.indices(ctx.num_tokens))


class RecordAttention(Strategy):
    """LLM stage after layer 0: records the attention signal, keeps everything."""

    name = "record-attention"

    def __init__(self, query: str = "last") -> None:
        super().__init__()
        self.query = query
        self.seen: list[torch.Tensor] = []

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.llm(0, "attention", query=self.query),)  # type: ignore[arg-type]

    def select(self, ctx: StageContext) -> Selection:
        assert ctx.attention is not None
        self.seen.append(ctx.attention)
        return Selection(keep=torch.arange(ctx.num_tokens))


def test_registered_and_picked_by_model_type(family: Family, ckpt: Path) -> None:
    import tokenbench
    from tokenbench.compare import adapter_for

    registry = tokenbench.get_registry(refresh=True)
    assert {"qwen2_5_vl", "qwen2_vl", "llava"} <= set(registry.names("adapters"))
    assert adapter_for(registry, str(ckpt), None) is family.adapter
    assert family.adapter.visual_token_capacity({"model_type": family.name}) is None


@pytest.mark.parametrize("batch", [1, 2])
def test_baseline_equals_unmodified_model(adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample], batch: int) -> None:
    group = samples[-batch:] if batch == 1 else samples
    out, _, setups, _ = adapter.run(group, [s.question for s in group], Baseline(), FULL, max_new_tokens=20)
    enc = _encode(adapter, group)
    with torch.no_grad():
        ref = stock(**enc).logits[:, -1].float()
        gen = stock.generate(**enc, max_new_tokens=20, do_sample=False)
    torch.testing.assert_close(out.first_logits, ref, atol=ATOL, rtol=0)
    assert out.tokens == gen[:, enc["input_ids"].shape[1] :].tolist()
    assert all(len(t) == 20 for t in out.tokens)
    assert [s.num_visual for s in setups] == [h * w for h, w in GRIDS[-batch:]]


def _runs(ids: torch.Tensor, token: int) -> int:
    """Runs of ``token`` in ``ids`` [S]: one per image (video), as the stock ``get_rope_index`` reads them."""
    hit = ids == token
    return int((hit & ~torch.cat([torch.zeros(1, dtype=torch.bool), hit[:-1]])).sum())


def _stock_prompt(stock: Any, enc: dict[str, Any], b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample b alone, as the stock model builds it: (prompt embeddings [S, d] with its image and video
    features written into their placeholders in order, 3-D positions [3, 1, S], visual mask [S])."""
    cfg = stock.config
    valid = [enc["attention_mask"][j].bool() for j in range(enc["input_ids"].shape[0])]
    ids = enc["input_ids"][b : b + 1, valid[b]]
    mm = enc["mm_token_type_ids"][b : b + 1, valid[b]]
    with torch.no_grad():
        embeds = stock.model.get_input_embeddings()(ids)[0]
        masks, grids, rope = {}, {}, {}
        for kind, token, pixels in (("image", cfg.image_token_id, "pixel_values"), ("video", cfg.video_token_id, "pixel_values_videos")):
            masks[kind] = ids[0] == token
            thw = enc.get(f"{kind}_grid_thw")
            if thw is None:
                continue
            first = sum(_runs(enc["input_ids"][j, valid[j]], token) for j in range(b))
            mine = _runs(ids[0], token)
            get = stock.model.get_image_features if kind == "image" else stock.model.get_video_features
            feats = list(get(enc[pixels], thw, return_dict=True).pooler_output)[first : first + mine]
            if mine:
                embeds[masks[kind]] = torch.cat(feats)
                grids[f"{kind}_grid_thw"] = thw[first : first + mine]
                if kind == "video" and "second_per_grid_ts" in enc:
                    rope["second_per_grid_ts"] = enc["second_per_grid_ts"][first : first + mine]
        pos, _ = stock.model.get_rope_index(ids, mm, **grids, **rope)
    return embeds, pos, masks["image"] | masks["video"]


def _renumbered(positions: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """``positions=contiguous`` for M-RoPE, written out: the first token and every visual token keep their
    3-D ids; every other token takes the largest id so far + 1 on all three axes."""
    out = positions.clone()
    largest = int(out[:, 0, 0].max())
    for i in range(1, out.shape[2]):
        if not bool(visual[i]):
            out[:, 0, i] = largest + 1
        largest = max(largest, int(out[:, 0, i].max()))
    return out


def _reference(
    stock: Any,
    enc: dict[str, Any],
    b: int,
    rows: torch.Tensor,
    steps: int,
    merged: tuple[int, list[int]] | None = None,
    contiguous: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Sample b alone through the stock model on ``inputs_embeds``: the text, and of its visual tokens (images
    and video, in sequence order) only ``rows`` (original indices, ascending), each at its original 3-D
    position (``contiguous``: renumbered by :func:`_renumbered`); greedy decoding after the largest position,
    as the stock ``generate`` continues.
    ``merged = (j, sources)``: entry j of ``rows`` is the mean of the visual tokens ``sources``, at the position of ``rows[j]``."""
    from transformers import DynamicCache

    cfg = stock.config
    full, pos, visual = _stock_prompt(stock, enc, b)
    where = torch.nonzero(visual).squeeze(1)
    with torch.no_grad():
        vis = full[where][rows].clone()
        if merged is not None:
            vis[merged[0]] = full[where][merged[1]].mean(dim=0)
        full[where[rows]] = vis
        kept = ~visual
        kept[where[rows]] = True
        embeds, positions = full[kept][None], pos[:, :, kept]
        if contiguous:
            positions = _renumbered(positions, visual[kept])
        length = embeds.shape[1]
        cache = DynamicCache(config=cfg.text_config)
        logits = stock(
            inputs_embeds=embeds, position_ids=positions, attention_mask=torch.ones(1, length, dtype=torch.long), cache=cache, use_cache=True
        ).logits[:, -1]
        first, tokens = logits[0].float(), []
        for step in range(steps):
            tokens.append(int(logits.argmax(-1)))
            step_pos = (positions.max() + 1 + step).view(1, 1, 1).expand(3, 1, 1)
            mask = torch.ones(1, length + step + 1, dtype=torch.long)
            logits = stock(input_ids=torch.tensor([[tokens[-1]]]), position_ids=step_pos, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]
    return first, tokens


def test_vision_selection_equals_pruned_inputs_embeds_with_original_positions(adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample]) -> None:
    out, _, setups, _ = adapter.run(samples, [s.question for s in samples], KeepFixed(), FULL, max_new_tokens=6)
    enc = _encode(adapter, samples)
    for b, setup in enumerate(setups):
        keep = KeepFixed.indices(setup.num_visual)
        assert out.kept[b]["vision"] == keep.tolist()
        assert out.tokens_per_layer[b] == [keep.numel()] * LAYERS
        first, tokens = _reference(stock, enc, b, keep, steps=6)
        torch.testing.assert_close(out.first_logits[b], first, atol=ATOL, rtol=0)
        assert out.tokens[b] == tokens


class KeepAndMerge(Strategy):
    """Vision stage: keeps every third token (and the last); the mean of the others goes to token 1's position."""

    name = "keep-and-merge"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    def select(self, ctx: StageContext) -> Selection:
        keep = KeepFixed.indices(ctx.num_tokens)
        dropped = [i for i in range(ctx.num_tokens) if i not in set(keep.tolist())]
        return Selection(keep=keep, merged=ctx.tokens[dropped].mean(dim=0, keepdim=True), merged_positions=torch.tensor([1]))


def test_merged_token_takes_its_donor_position(adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample]) -> None:
    out, _, setups, _ = adapter.run(samples, [s.question for s in samples], KeepAndMerge(), FULL, max_new_tokens=4)
    enc = _encode(adapter, samples)
    for b, setup in enumerate(setups):
        n = setup.num_visual
        keep = KeepFixed.indices(n).tolist()
        assert out.merged[b]["vision"] == 1 and out.tokens_per_layer[b] == [len(keep) + 1] * LAYERS
        rows = torch.tensor([keep[0], 1] + keep[1:])  # the merged token sits right after token 0, at token 1's position
        first, tokens = _reference(stock, enc, b, rows, steps=4, merged=(1, [i for i in range(n) if i not in keep]))
        torch.testing.assert_close(out.first_logits[b], first, atol=ATOL, rtol=0)
        assert out.tokens[b] == tokens


class PruneInLLM(Strategy):
    """LLM stage after layer 0: keeps every third visual token (and the last)."""

    name = "prune-in-llm"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.llm(0),)

    def select(self, ctx: StageContext) -> Selection:
        return Selection(keep=KeepFixed.indices(ctx.num_tokens))


def test_llm_selection_equals_stock_layers_without_cache(adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample]) -> None:
    """Reference without any cache: every step reruns the prompt and the generated tokens through the stock
    layers, dropping the unkept visual rows (and their 3-D positions) after layer 0."""
    out, _, setups, _ = adapter.run(samples, [s.question for s in samples], PruneInLLM(), FULL, max_new_tokens=4)
    enc = _encode(adapter, samples)
    lm, cfg = stock.model.language_model, stock.config
    for b, setup in enumerate(setups):
        keep = KeepFixed.indices(setup.num_visual)
        assert out.tokens_per_layer[b] == [setup.num_visual] + [keep.numel()] * (LAYERS - 1)
        valid = enc["attention_mask"][b].bool()
        ids = enc["input_ids"][b : b + 1, valid]
        start = int(enc["image_grid_thw"][:b].prod(-1).sum())
        thw = enc["image_grid_thw"][b : b + 1]
        with torch.no_grad():
            feats = stock.model.get_image_features(enc["pixel_values"][start : start + int(thw.prod())], thw, return_dict=True).pooler_output[0]
            embeds = lm.embed_tokens(ids)
            img = torch.nonzero(ids[0] == cfg.image_token_id).squeeze(1)
            embeds[0, img] = feats
            pos, _ = stock.model.get_rope_index(ids, enc["mm_token_type_ids"][b : b + 1, valid], image_grid_thw=thw)
            survivors = torch.ones(ids.shape[1], dtype=torch.bool)
            survivors[img] = False
            survivors[img[keep]] = True
            tokens: list[int] = []
            for step in range(4):
                h = torch.cat([embeds, lm.embed_tokens(torch.tensor([tokens], dtype=torch.long))], dim=1)
                p = torch.cat([pos, pos[:, :, -1:] + 1 + torch.arange(len(tokens)).view(1, 1, -1)], dim=2)
                rows = torch.cat([survivors, torch.ones(len(tokens), dtype=torch.bool)])
                for i, layer in enumerate(lm.layers):
                    h = layer(h, attention_mask=None, position_embeddings=lm.rotary_emb(h, p))
                    if i == 0:
                        h, p = h[:, rows], p[:, :, rows]
                logits = stock.lm_head(lm.norm(h[:, -1])).float()
                if step == 0:
                    torch.testing.assert_close(out.first_logits[b], logits[0], atol=ATOL, rtol=0)
                tokens.append(int(logits.argmax(-1)))
        assert out.tokens[b] == tokens


def test_grids_counts_and_fraction_budgets_are_per_image(family: Family, adapter: Qwen2VLAdapter, ckpt: Path, samples: list[Sample]) -> None:
    from tokenbench.strategies.random_drop import RandomDrop

    results = adapter.generate(samples, [s.question for s in samples], RandomDrop(), Budget("fraction", 0.25), max_new_tokens=2)
    assert [r.grid for r in results] == GRIDS
    assert [r.num_visual for r in results] == [24, 9]
    assert [r.budget for r in results] == [6, 2]
    assert [len(r.kept["vision"]) for r in results] == [6, 2]
    assert [r.tokens_per_layer for r in results] == [[6] * LAYERS, [2] * LAYERS]
    assert all(r.text_tokens > 0 for r in results)
    small = family.adapter.load(str(ckpt), max_pixels=16 * 16)
    assert small.describe()["max_pixels"] == 256 and adapter.describe()["max_pixels"] == 64 * 64
    res = small.generate(samples[:1], PROMPTS[:1], RandomDrop(), Budget("fraction", 0.25), max_new_tokens=1)
    assert res[0].num_visual < 24 and res[0].num_visual == res[0].grid[0] * res[0].grid[1]


def test_flops_follow_each_image_grid_and_the_kept_tokens(adapter: Qwen2VLAdapter, samples: list[Sample]) -> None:
    from tokenbench.strategies.random_drop import RandomDrop

    full = adapter.generate(samples, PROMPTS, Baseline(), FULL, max_new_tokens=1)
    pruned = adapter.generate(samples, PROMPTS, RandomDrop(), Budget("fraction", 0.25), max_new_tokens=1)
    f_full, f_small, f_pruned = adapter.flops(full[0]), adapter.flops(full[1]), adapter.flops(pruned[0])
    assert set(f_full) == {"vision", "projector", "llm_prefill", "decode_per_token", "total_prefill"}
    from tokenbench.flops import count_macs

    merger = adapter.model.model.visual.merger
    linear = 24 * sum(m.in_features * m.out_features for m in merger.mlp if isinstance(m, torch.nn.Linear))
    width = merger.ln_q.weight.shape[0]
    norm = count_macs(merger.ln_q, (torch.zeros(24 * 4, width),)).total  # fvcore's LayerNorm count (Qwen2-VL); RMSNorm: 0
    assert f_full["projector"] == 2 * (linear + norm)
    assert f_full["vision"] > f_small["vision"] > 0 and f_full["projector"] > f_small["projector"]
    assert f_pruned["vision"] == f_full["vision"] and f_pruned["llm_prefill"] < f_full["llm_prefill"]


def _recording_eager_model(family: Family, ckpt: Path, name: str) -> tuple[Any, list[tuple[Any, torch.Tensor]]]:
    """The stock model under an eager attention kernel registered as ``name`` that records (module, probabilities) of every call."""
    import importlib

    from transformers import AttentionInterface

    eager_attention_forward = importlib.import_module(family.adapter.modeling).eager_attention_forward
    records: list[tuple[Any, torch.Tensor]] = []

    def recording_eager(module: Any, *args: Any, **kwargs: Any) -> Any:
        out, weights = eager_attention_forward(module, *args, **kwargs)
        records.append((module, weights))
        return out, weights

    AttentionInterface.register(name, recording_eager)
    return family.stock_class().from_pretrained(str(ckpt), dtype=torch.float32, attn_implementation=name).eval(), records


def test_saliency_equals_eager_attention_in_the_saliency_block(family: Family, adapter: Qwen2VLAdapter, ckpt: Path, samples: list[Sample]) -> None:
    eager, records = _recording_eager_model(family, ckpt, "tokenbench_test_record_eager")
    enc = _encode(adapter, samples)
    block = eager.model.visual.blocks[family.saliency_block(eager.config)]
    with torch.no_grad():
        vis = eager.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
        window_order = eager.model.visual.merger(vis.last_hidden_state)
    probs = [w for m, w in records if m is block.attn]
    assert len(probs) == 2  # one full-attention span per image
    received = torch.cat([p[0].mean(dim=0).mean(dim=0) for p in probs])  # heads, then query rows
    pooled = received.view(-1, 4).mean(dim=1)  # the tower's order
    # the language model's order, read off the stock merger output (Qwen2.5-VL: window order differs)
    perm = torch.cdist(vis.pooler_output, window_order).argmin(dim=1)
    assert sorted(perm.tolist()) == list(range(len(perm))) and (perm.tolist() != list(range(len(perm)))) == family.windowed
    expected = pooled[perm].split([24, 9])
    feats, saliency = adapter.encode_images(enc["pixel_values"], enc["image_grid_thw"], saliency=True)
    assert saliency is not None
    for b in range(2):
        torch.testing.assert_close(feats[b], vis.pooler_output.split([24, 9])[b], atol=ATOL, rtol=0)
        torch.testing.assert_close(saliency[b], expected[b].float(), atol=1e-6, rtol=0)
        assert abs(float(saliency[b].sum()) - 0.25) < 1e-5  # patch saliencies sum to 1; a token is the mean of 4


@pytest.mark.parametrize("query", ["last", "text"])
def test_attention_signal_equals_eager_probabilities(family: Family, adapter: Qwen2VLAdapter, ckpt: Path, samples: list[Sample], query: str) -> None:
    eager = family.stock_class().from_pretrained(str(ckpt), dtype=torch.float32, attn_implementation="eager").eval()
    strategy = RecordAttention(query)
    adapter.run(samples[:1], PROMPTS[:1], strategy, FULL, max_new_tokens=1)
    enc = _encode(adapter, samples[:1])
    with torch.no_grad():
        att = eager(**enc, output_attentions=True).attentions[0][0].mean(dim=0)  # layer 0, heads averaged: [S, S]
    is_img = enc["input_ids"][0] == eager.config.image_token_id
    rows = torch.tensor([att.shape[0] - 1]) if query == "last" else torch.nonzero(~is_img).squeeze(1)
    torch.testing.assert_close(strategy.seen[0], att[rows][:, is_img].float(), atol=1e-5, rtol=0)


#: strategies that cannot run on this test's samples, for reasons that have nothing to do with Qwen
UNRELATED = {"oracle": "needs samples of the shapes task (meta['relevant_cells'])"}


def _strategy_names() -> list[str]:
    import tokenbench

    return tokenbench.get_registry(refresh=True).names("strategies")


@pytest.mark.parametrize("name", _strategy_names())
def test_every_registered_strategy_runs(adapter: Qwen2VLAdapter, samples: list[Sample], name: str) -> None:
    import tokenbench

    if name in UNRELATED:
        pytest.skip(f"{name}: {UNRELATED[name]}")
    cls = tokenbench.get_registry().load("strategies", name)
    strategy = cls()
    budget = FULL if strategy.keeps_all else Budget("fraction", 0.5)
    results = adapter.generate(samples, [s.question for s in samples], strategy, budget, max_new_tokens=2)
    for r, n in zip(results, (24, 9)):
        assert r.num_visual == n and len(r.tokens_per_layer) == LAYERS
        assert all(0 <= i < n for kept in r.kept.values() for i in kept)
        assert 0 < r.tokens_per_layer[-1] <= n and isinstance(r.prediction, str)
        if strategy.keeps_all:
            assert r.tokens_per_layer == [n] * LAYERS


# --- several images and a video per sample ----------------------------------------------------
VIDEO_SIZE = (32, 24)  # (width, height) of the video frames -> a (3, 4) grid per temporal patch
FRAMES = 4  # -> two temporal patches of two frames


@pytest.fixture(scope="module")
def multi(samples: list[Sample]) -> Sample:
    """A sample with the two test images, (4, 6) and (3, 3) grids."""
    return Sample(id="two-images", image=[samples[0].image, samples[1].image], question=PROMPTS[0], answers=("x",))


@pytest.fixture(scope="module")
def video() -> Sample:
    """A video-only sample: 4 distinct random frames (a list of PIL images)."""
    rng = np.random.default_rng(1)
    from PIL import Image

    w, h = VIDEO_SIZE
    frames = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(FRAMES)]
    return Sample(id="video", image=None, video=frames, question=PROMPTS[1], answers=("x",))


def _inputs(adapter: Qwen2VLAdapter, group: list[Sample]) -> dict[str, Any]:
    """The processor's output for ``group``, exactly as :meth:`DecoderAdapter.run` builds it."""
    images, videos = adapter.visual_inputs(group)
    texts = [adapter.chat_prompt(s.question, images=len(i), video=bool(v)) for s, i, v in zip(group, images, videos)]
    return dict(adapter.processor_inputs(images, videos, texts))


def _assert_equals_generate(adapter: Qwen2VLAdapter, stock: Any, group: list[Sample], steps: int = 12) -> list[Any]:
    out, _, setups, _ = adapter.run(group, [s.question for s in group], Baseline(), FULL, max_new_tokens=steps)
    enc = _inputs(adapter, group)
    with torch.no_grad():
        ref = stock(**enc).logits[:, -1].float()
        gen = stock.generate(**enc, max_new_tokens=steps, do_sample=False)
    torch.testing.assert_close(out.first_logits, ref, atol=ATOL, rtol=0)
    assert out.tokens == gen[:, enc["input_ids"].shape[1] :].tolist()
    assert all(len(t) == steps for t in out.tokens)
    visual = (enc["input_ids"] == stock.config.image_token_id) | (enc["input_ids"] == stock.config.video_token_id)
    assert [s.num_visual for s in setups] == visual.sum(dim=1).tolist()
    return setups


@pytest.mark.parametrize("batch", [1, 2])
def test_two_images_baseline_equals_model_generate(adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample], multi: Sample, batch: int) -> None:
    group = [multi] if batch == 1 else [multi, samples[1]]
    setups = _assert_equals_generate(adapter, stock, group)
    two = setups[0]
    assert [(s.kind, s.grid, s.start, s.source) for s in two.segments] == [("image", (4, 6), 0, 0), ("image", (3, 3), 24, 1)]
    assert two.num_visual == 33 and two.grid == (1, 33)
    assert two.vision_inputs == ((1, 8, 12), (1, 6, 6))
    if batch == 2:
        assert [(s.kind, s.grid) for s in setups[1].segments] == [("image", (3, 3))] and setups[1].grid == (3, 3)


@pytest.mark.parametrize("case", ["video", "video-and-image-sample", "image-and-video"])
def test_video_baseline_equals_model_generate_with_a_frame_segment_per_temporal_patch(
    family: Family, adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample], video: Sample, case: str
) -> None:
    both = Sample(id="image-and-video", image=samples[1].image, video=video.video[:3], question=PROMPTS[0], answers=("x",))  # 3 frames: padded to 4
    group = {"video": [video], "video-and-image-sample": [video, samples[1]], "image-and-video": [both]}[case]
    enc = _inputs(adapter, group)
    assert enc["video_grid_thw"].tolist() == [[2, 6, 8]]
    assert ("second_per_grid_ts" in enc) == family.windowed  # Qwen2.5-VL: seconds per temporal patch, 2 frames at 1 fps
    if family.windowed:
        assert enc["second_per_grid_ts"].tolist() == [2.0]
    setups = _assert_equals_generate(adapter, stock, group)
    s = setups[0]
    frames = [(seg.kind, seg.grid, seg.source) for seg in s.segments if seg.kind == "frame"]
    assert frames == [("frame", (3, 4), 1 if case == "image-and-video" else 0)] * 2  # one per temporal patch, numbered after the images
    assert [seg.start for seg in s.segments] == [sum(x.count for x in s.segments[:i]) for i in range(len(s.segments))]
    assert sum(seg.count for seg in s.segments) == s.num_visual
    if case == "image-and-video":
        assert (s.segments[0].kind, s.segments[0].grid, s.segments[0].source) == ("image", (3, 3), 0)  # the template puts the image first
        assert s.vision_inputs == ((1, 6, 6), (2, 6, 8)) and s.num_visual == 33
    else:
        assert s.vision_inputs == ((2, 6, 8),) and s.num_visual == 24 and s.grid == (1, 24)


@pytest.mark.parametrize("which", ["two-images", "video"])
def test_vision_selection_across_images_and_frames_equals_pruned_inputs_embeds(
    adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample], multi: Sample, video: Sample, which: str
) -> None:
    group = [multi if which == "two-images" else video, samples[1]]
    out, _, setups, _ = adapter.run(group, [s.question for s in group], KeepFixed(), FULL, max_new_tokens=6)
    enc = _inputs(adapter, group)
    for b, setup in enumerate(setups):
        keep = KeepFixed.indices(setup.num_visual)
        assert out.kept[b]["vision"] == keep.tolist()
        first, tokens = _reference(stock, enc, b, keep, steps=6)
        torch.testing.assert_close(out.first_logits[b], first, atol=ATOL, rtol=0)
        assert out.tokens[b] == tokens


def test_flops_of_several_inputs_are_the_sum_of_their_parts(adapter: Qwen2VLAdapter, samples: list[Sample], multi: Sample, video: Sample) -> None:
    one = adapter.generate(samples, PROMPTS, Baseline(), FULL, max_new_tokens=1)
    two, vid = adapter.generate([multi, video], [multi.question, video.question], Baseline(), FULL, max_new_tokens=1)
    f_one = [adapter.flops(r) for r in one]
    f_two = adapter.flops(two)
    for part in ("vision", "projector"):
        assert f_two[part] == f_one[0][part] + f_one[1][part] > 0
    assert f_two["llm_prefill"] > max(f["llm_prefill"] for f in f_one)
    # the tower attends within each temporal patch: a video of two costs two single-patch frames
    from tokenbench.adapter import TokenCounts

    frame = adapter.vision_macs(TokenCounts(12, (3, 4), 1, (12,) * LAYERS, ((1, 6, 8),)))
    assert adapter.vision_macs(vid.counts) == (2 * frame[0], 2 * frame[1])
    # no recorded inputs: one image of the grid, as before
    assert adapter.vision_macs(TokenCounts(24, (4, 6), 1, (24,) * LAYERS)) == adapter.vision_macs(one[0].counts)


def test_video_processor_lays_frames_out_as_the_stock_patchify(adapter: Qwen2VLAdapter, video: Sample) -> None:
    """The frames, resized and normalised by the image processor, patchified by a transcription of the stock
    ``Qwen2VLVideoProcessor.patchify`` (frames padded to a multiple of ``temporal_patch_size`` with the last)."""
    ip = adapter.processor.image_processor
    p, m, tps = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    frames = video.load_video()[:3]
    out = adapter.processor(images=None, text=[adapter.chat_prompt("x", images=0, video=True)], videos=[frames])
    per = ip(images=frames, return_tensors="pt")
    _, gh, gw = per["image_grid_thw"][0].tolist()
    # one frame's image patches [gh/m, gw/m, m, m, C, T, p, p] back to the normalised frame [C, H, W]
    imgs = per["pixel_values"].view(len(frames), gh // m, gw // m, m, m, -1, tps, p, p)[:, :, :, :, :, :, 0]
    imgs = imgs.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(len(frames), -1, gh * p, gw * p)
    videos = imgs[None]  # [1, F, C, H, W]
    # --- the stock patchify ---
    batch_size, num_frames, channel, resized_height, resized_width = videos.shape
    if pad := -num_frames % tps:
        videos = torch.cat((videos, videos[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
        num_frames += pad
    grid_t, grid_h, grid_w = num_frames // tps, resized_height // p, resized_width // p
    patches = videos.view(batch_size, grid_t, tps, channel, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(batch_size, grid_t * grid_h * grid_w, channel * tps * p * p)
    # ---
    assert out["video_grid_thw"].tolist() == [[grid_t, grid_h, grid_w]] == [[2, 6, 8]]
    torch.testing.assert_close(out["pixel_values_videos"], patches[0], atol=0, rtol=0)
    placeholders = out["input_ids"] == adapter.video_token_id
    assert int(placeholders.sum()) == 2 * 3 * 4
    assert out["mm_token_type_ids"].tolist() == (placeholders.int() * 2).tolist()


def test_video_saliency_equals_eager_attention_per_temporal_patch(family: Family, adapter: Qwen2VLAdapter, ckpt: Path, video: Sample) -> None:
    """The tower attends within each temporal patch (its ``cu_seqlens``): the saliency is the image rule per patch."""
    eager, records = _recording_eager_model(family, ckpt, "tokenbench_test_record_eager_video")
    enc = _inputs(adapter, [video])
    block = eager.model.visual.blocks[family.saliency_block(eager.config)]
    with torch.no_grad():
        vis = eager.model.visual(enc["pixel_values_videos"], grid_thw=enc["video_grid_thw"])
        window_order = eager.model.visual.merger(vis.last_hidden_state)
    probs = [w for mod, w in records if mod is block.attn]
    assert len(probs) == 2  # one span per temporal patch
    pooled = torch.cat([w[0].mean(dim=0).mean(dim=0) for w in probs]).view(-1, 4).mean(dim=1)
    perm = torch.cdist(vis.pooler_output, window_order).argmin(dim=1)
    feats, saliency = adapter.encode_videos(enc["pixel_values_videos"], enc["video_grid_thw"], saliency=True)
    assert saliency is not None and len(feats) == 1
    torch.testing.assert_close(feats[0], vis.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(saliency[0], pooled[perm].float(), atol=1e-6, rtol=0)
    assert [round(float(x.sum()), 5) for x in saliency[0].split(12)] == [0.25, 0.25]  # each temporal patch's sum to 1/m²
    out, _, setups, _ = adapter.run([video], [video.question], Saliency(), FULL, max_new_tokens=1)
    torch.testing.assert_close(setups[0].saliency, saliency[0], atol=0, rtol=0)


class Saliency(Strategy):
    """Vision stage asking for the encoder saliency; keeps everything."""

    name = "ask-saliency"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision("saliency"),)

    def select(self, ctx: StageContext) -> Selection:
        assert ctx.saliency is not None
        return Selection(keep=torch.arange(ctx.num_tokens))


@pytest.mark.parametrize("name", _strategy_names())
def test_every_registered_strategy_runs_on_a_video(adapter: Qwen2VLAdapter, video: Sample, name: str) -> None:
    import tokenbench

    if name in UNRELATED:
        pytest.skip(f"{name}: {UNRELATED[name]}")
    strategy = tokenbench.get_registry().load("strategies", name)()
    (r,) = adapter.generate([video], [video.question], strategy, Budget("count", 6), max_new_tokens=2)
    n = 24
    assert r.num_visual == n and len(r.tokens_per_layer) == LAYERS and isinstance(r.prediction, str)
    assert [(s.kind, s.grid) for s in r.segments] == [("frame", (3, 4))] * 2
    assert all(0 <= i < n for kept in r.kept.values() for i in kept)
    assert 0 < r.tokens_per_layer[-1] <= n
    assert all(len(counts) == 2 for counts in r.segment_counts.values())
    if strategy.keeps_all:
        assert r.tokens_per_layer == [n] * LAYERS


@pytest.mark.parametrize("which", ["two-images", "video"])
def test_vision_selection_with_contiguous_positions_equals_the_renumbered_reference(
    adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample], multi: Sample, video: Sample, which: str
) -> None:
    group = [multi if which == "two-images" else video, samples[1]]
    out, _, setups, _ = adapter.run(group, [s.question for s in group], KeepFixed(positions="contiguous"), FULL, max_new_tokens=6)
    enc = _inputs(adapter, group)
    for b, setup in enumerate(setups):
        first, tokens = _reference(stock, enc, b, KeepFixed.indices(setup.num_visual), steps=6, contiguous=True)
        torch.testing.assert_close(out.first_logits[b], first, atol=ATOL, rtol=0)
        assert out.tokens[b] == tokens


def _hooked_logits(stock: Any, embeds: torch.Tensor, positions: torch.Tensor, survivors: torch.Tensor) -> torch.Tensor:
    """Last-position logits of the stock model on ``inputs_embeds`` at 3-D ``positions``, with the rows
    ``~survivors`` dropped after decoder layer 0 by forward pre-hooks on the later layers (hidden states and
    rotary rows; no mask: causal over the survivors)."""
    layers = stock.model.language_model.layers

    def prune(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if hidden.shape[1] == survivors.numel():
            hidden = hidden[:, survivors]
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (cos[:, survivors], sin[:, survivors])
        kwargs["attention_mask"] = None
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"][..., survivors]
        return (hidden, *args[1:]), kwargs

    hooks = [layer.register_forward_pre_hook(prune, with_kwargs=True) for layer in layers[1:]]
    try:
        with torch.no_grad():
            return stock(inputs_embeds=embeds[None], position_ids=positions, use_cache=False).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("which", ["two-images", "video"])
def test_llm_selection_equals_hooked_stock_model(adapter: Qwen2VLAdapter, stock: Any, samples: list[Sample], multi: Sample, video: Sample, which: str) -> None:
    """An LLM-stage selection after layer 0 equals the stock model whose later layers drop the unkept visual
    rows through forward pre-hooks, re-run for every generated token (no cache)."""
    group = [multi if which == "two-images" else video, samples[1]]
    out, _, setups, _ = adapter.run(group, [s.question for s in group], PruneInLLM(), FULL, max_new_tokens=3)
    enc = _inputs(adapter, group)
    embed = stock.get_input_embeddings()
    for b, setup in enumerate(setups):
        full, pos, visual = _stock_prompt(stock, enc, b)
        where = torch.nonzero(visual).squeeze(1)
        keep = KeepFixed.indices(setup.num_visual)
        tokens: list[int] = []
        for step in range(3):
            with torch.no_grad():
                seq = torch.cat([full, embed(torch.tensor(tokens, dtype=torch.long))]) if tokens else full
            after = (pos.max() + 1 + torch.arange(len(tokens))).view(1, 1, -1).expand(3, 1, -1)
            survivors = torch.ones(seq.shape[0], dtype=torch.bool)
            survivors[where] = False
            survivors[where[keep]] = True
            logits = _hooked_logits(stock, seq, torch.cat([pos, after], dim=2), survivors)
            if step == 0:
                torch.testing.assert_close(out.first_logits[b], logits, atol=ATOL, rtol=0)
            tokens.append(int(logits.argmax()))
        assert out.tokens[b] == tokens
