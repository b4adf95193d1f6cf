"""Pins ``pdrop`` (PyramidDrop) and ``dart`` (DART) to their published algorithms.

End-to-end tests run the real adapters on tiny random checkpoints of both architectures
(LLaVA and Qwen2.5-VL, built in a temporary folder, re-initialised with O(1) weights so
that attention is peaked and hidden states are diverse, and RMSNorm weights are not all
one). Every kept set is re-derived here from the published rule, independently of the
strategies' helpers: the stock decoder layers are run by hand from the inputs the stock
model gives its first layer (captured with a hook), attention comes from the eager
``self_attn`` weights, and selections are made with plain Python sorting.

The algorithmic tests build :class:`StageContext` objects by hand (hand-computed cases
for the core rules, and every parameter refusal).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenbench.budget import Budget
from tokenbench.errors import BudgetError, UsageError
from tokenbench.registry import get_registry
from tokenbench.strategy import ModelInfo, StageContext, StageSpec, validate_selection
from tokenbench.task import Sample

QUESTIONS = ("what colour is the square ?", "how many red circle are there left of the blue square in this picture ?")
LLAVA_LAYERS = 8
QWEN_LAYERS = 8
QWEN_SIZES = ((48, 32), (24, 24))  # (width, height): 4×6 and 3×3 token grids


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is fastest on a shared machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sharpen(model: Any, seed: int = 1) -> None:
    """O(1) random weights (the stock 0.02 init gives near-uniform attention and near-identical tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(scale + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


@dataclass
class Model:
    adapter: Any
    eager: Any  # the stock model, eager attention, same weights


def _load(path: Path, cls: Any, adapter_name: str) -> Model:
    model = cls.from_pretrained(str(path), dtype=torch.float32)
    _sharpen(model)
    model.save_pretrained(str(path))
    adapter = get_registry().load("adapters", adapter_name).load(str(path))
    adapter.eos_ids = set()
    eager = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()
    return Model(adapter, eager)


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """LLaVA, 6×6 visual tokens, 8 decoder layers."""
    from transformers import LlavaForConditionalGeneration

    from tokenbench.testing import tiny_llava_checkpoint

    path = tiny_llava_checkpoint(tmp_path_factory.mktemp("llava") / "ck", image_size=48, patch_size=8, layers=LLAVA_LAYERS)
    return _load(path, LlavaForConditionalGeneration, "llava")


@pytest.fixture(scope="module")
def llava576(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """LLaVA with LLaVA-1.5's shape: 24×24 = 576 visual tokens, 32 decoder layers."""
    from transformers import LlavaForConditionalGeneration

    from tokenbench.testing import tiny_llava_checkpoint

    path = tiny_llava_checkpoint(tmp_path_factory.mktemp("llava576") / "ck", image_size=96, patch_size=4, layers=32)
    return _load(path, LlavaForConditionalGeneration, "llava")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """Qwen2.5-VL, 8 decoder layers; the two images give 4×6 and 3×3 token grids."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tokenbench.testing import tiny_qwen2_5_vl_checkpoint

    path = tiny_qwen2_5_vl_checkpoint(tmp_path_factory.mktemp("qwen") / "ck", layers=QWEN_LAYERS)
    return _load(path, Qwen2_5_VLForConditionalGeneration, "qwen2_5_vl")


def _llava_samples(size: int) -> list[Sample]:
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8")) for _ in QUESTIONS]
    return [Sample(id=f"s{i}", image=im, question=q, answers=("x",)) for i, (im, q) in enumerate(zip(images, QUESTIONS))]


def _qwen_samples() -> list[Sample]:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Sample(id=f"q{i}", image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), question=q, answers=("x",))
        for i, ((w, h), q) in enumerate(zip(QWEN_SIZES, QUESTIONS))
    ]


@pytest.fixture(scope="module", params=["llava", "qwen"])
def arch(request: pytest.FixtureRequest) -> tuple[Model, list[Sample]]:
    if request.param == "llava":
        return request.getfixturevalue("llava"), _llava_samples(48)
    return request.getfixturevalue("qwen"), _qwen_samples()


def _generate(model: Model, samples: list[Sample], strategy: Any, budget: Budget) -> list[Any]:
    return model.adapter.generate(samples, [s.question for s in samples], strategy, budget, seed=0, max_new_tokens=2)


def _strategy(name: str, **params: Any) -> Any:
    return get_registry().load("strategies", name)(**params)


# ------------------------------------------------- independent reference: the stock layers by hand


@dataclass
class Prefill:
    """What the stock model hands its first decoder layer for one sample (no padding)."""

    hidden: torch.Tensor  # [1, S, d]: input embeddings with the image features in place
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [1, S, head_dim] (M-RoPE already folded for Qwen)
    visual: list[bool]  # per sequence entry


def prefill(model: Model, sample: Sample) -> Prefill:
    hf = model.eager
    enc = model.adapter.processor(images=[sample.load_image()], text=[model.adapter.chat_prompt(sample.question)], return_tensors="pt", padding=True)
    lm = hf.model.language_model
    grabbed: dict[str, Any] = {}

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        grabbed["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        grabbed["rope"] = tuple(t.detach().clone() for t in kwargs["position_embeddings"])

    handle = lm.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(**enc)
    finally:
        handle.remove()
    visual = (enc["input_ids"][0] == hf.config.image_token_id).tolist()
    return Prefill(grabbed["hidden"], grabbed["rope"], visual)


def _causal(s: int) -> torch.Tensor:
    return torch.full((s, s), float("-inf")).triu(1)[None, None]


def _run(layer: Any, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    out = layer(h, attention_mask=_causal(h.shape[1]), position_embeddings=rope)
    return out[0] if isinstance(out, tuple) else out


def _last_row_attention(layer: Any, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> list[float]:
    """The layer's eager attention probabilities from the last position, averaged over heads."""
    _, weights = layer.self_attn(layer.input_layernorm(h), attention_mask=_causal(h.shape[1]), position_embeddings=rope)[:2]
    return weights.mean(dim=1)[0, -1].tolist()


def _top(scores: list[float], k: int) -> list[int]:
    """Positions of the k highest scores, ties to the lower position, ascending."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def pdrop_reference(model: Model, pre: Prefill, counts: dict[int, int], drop_before: bool = False) -> dict[int, list[int]]:
    """PyramidDrop by hand: at layer ``l`` in ``counts``, rank the visual tokens present by layer ``l``'s
    last-row attention on its input and keep ``counts[l]``. ``drop_before`` drops before layer ``l`` runs
    (the official placement); otherwise after it (tokenbench's). Returns the kept original indices per layer."""
    lm = model.eager.model.language_model
    h, rope, visual = pre.hidden, pre.rope, list(pre.visual)
    origin, n = [], 0
    for v in visual:
        origin.append(n if v else -1)
        n += int(v)
    kept: dict[int, list[int]] = {}
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            rows = None
            if i in counts:
                att = _last_row_attention(layer, h, rope)
                vis_pos = [j for j, v in enumerate(visual) if v]
                chosen = {vis_pos[j] for j in _top([att[p] for p in vis_pos], counts[i])}
                rows = [j for j, v in enumerate(visual) if not v or j in chosen]
                kept[i] = [origin[j] for j in rows if visual[j]]
            if rows is not None and drop_before:
                h, rope = h[:, rows], tuple(t[:, rows] for t in rope)
                visual, origin = [visual[j] for j in rows], [origin[j] for j in rows]
            h = _run(layer, h, rope)
            if rows is not None and not drop_before:
                h, rope = h[:, rows], tuple(t[:, rows] for t in rope)
                visual, origin = [visual[j] for j in rows], [origin[j] for j in rows]
    return kept


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _dart_greedy(states: list[torch.Tensor], pivot_vectors: list[torch.Tensor], image_pivots: list[int], budget: int) -> list[int]:
    """DART's duplication rule: every pivot in turn takes the pool tokens least similar to it; pivots first, image then text."""
    pool = [j for j in range(len(states)) if j not in image_pivots]
    kept = list(image_pivots)
    picks, p = budget - len(image_pivots), len(pivot_vectors)
    for i, vec in enumerate(pivot_vectors):
        quota = picks // p + (1 if i < picks % p else 0)
        ranked = sorted(pool, key=lambda j: (_cos(vec, states[j]), j))[:quota]
        kept += ranked
        pool = [j for j in pool if j not in ranked]
    return sorted(kept)


def dart_reference(model: Model, pre: Prefill, k: int, budget: int, image_pivots: int = 4, text_pivots: int = 4) -> list[int]:
    """DART as tokenbench runs it, by hand: pivots by the L1 norm of layer k−1's output (image) and of the
    input embeddings of the text after the image (text); duplication by cosine on layer k−1's output."""
    lm = model.eager.model.language_model
    h = pre.hidden
    with torch.no_grad():
        for layer in lm.layers[:k]:
            h = _run(layer, h, pre.rope)
    vis_pos = [j for j, v in enumerate(pre.visual) if v]
    states = [h[0, j].float() for j in vis_pos]
    img = _top([float(s.abs().sum()) for s in states], image_pivots)
    after = [j for j in range(vis_pos[-1] + 1, len(pre.visual)) if not pre.visual[j]]
    emb = [pre.hidden[0, j].float() for j in after]
    txt = _top([float(e.abs().sum()) for e in emb], min(text_pivots, len(emb)))
    return _dart_greedy(states, [states[i] for i in img] + [emb[i] for i in txt], img, budget)


def dart_official(model: Model, pre: Prefill, k: int, budget: int, image_pivots: int = 4, text_pivots: int = 4) -> list[int]:
    """DART as the official code does it (for measuring the proxies' effect): pivots by the L1 norm of layer
    k−1's keys (after RoPE, heads flattened), duplication by cosine on the final-norm output of layer k−1 for
    image and text pivots alike, ⌊b/P⌋ picks per pivot, so b − 4 + … tokens (132 at b = 128)."""
    lm = model.eager.model.language_model
    h = pre.hidden
    with torch.no_grad():
        for layer in lm.layers[: k - 1]:
            h = _run(layer, h, pre.rope)
        attn = lm.layers[k - 1].self_attn
        x = lm.layers[k - 1].input_layernorm(h)
        keys = attn.k_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
        cos, sin = pre.rope
        keys = keys * cos[:, None] + torch.cat([-keys[..., keys.shape[-1] // 2 :], keys[..., : keys.shape[-1] // 2]], dim=-1) * sin[:, None]
        l1 = keys.transpose(1, 2).reshape(x.shape[1], -1).abs().sum(-1).tolist()
        normed = lm.norm(_run(lm.layers[k - 1], h, pre.rope))[0]
    vis_pos = [j for j, v in enumerate(pre.visual) if v]
    after = list(range(vis_pos[-1] + 1, len(pre.visual)))
    img = [vis_pos[j] for j in _top([l1[p] for p in vis_pos], image_pivots)]
    txt = [after[j] for j in _top([l1[p] for p in after], text_pivots)]
    quota = budget // (image_pivots + text_pivots)
    pool, kept = [p for p in vis_pos if p not in img], list(img)
    for pivot in img + txt:
        ranked = sorted(pool, key=lambda j: (_cos(normed[pivot], normed[j]), j))[:quota]
        kept += ranked
        pool = [j for j in pool if j not in ranked]
    return sorted(vis_pos.index(j) for j in kept)


# -------------------------------------------------------------------------------- pdrop


def test_pdrop_plan_at_the_official_operating_point_and_the_maintainers_low_budget_layout():
    from tokenbench.strategies.pdrop import keep_plan, stage_layers
    from tokenbench.strategies.sparsevlm import layer_average

    # λ = 0.5 on layers 8/16/24 of 32: 288, 144, 72 (image_token_ratio_list 0.5/0.25/0.125), average 270
    assert keep_plan(576, 270, 32) == ((8, 16, 24), (288, 144, 72), 0.5)
    assert (8 * 576 + 8 * 288 + 8 * 144 + 8 * 72) / 32 == 270
    # b = 192: λ from 8 + 8λ + 8λ² + 8λ³ = 32·192/576 (the counts' average is b within 0.5)
    layers, counts, lam = keep_plan(576, 192, 32)
    assert layers == (8, 16, 24) and abs(8 + 8 * lam + 8 * lam**2 + 8 * lam**3 - 32 * 192 / 576) < 1e-9
    assert counts == tuple(math.floor(576 * lam**e + 0.5) for e in (1, 2, 3)) == (146, 37, 9)
    # b = 128 and 64 are out of reach of 8/16/24 (the first 8 layers alone average 144): the
    # maintainer's layout 2/8/16 (issue #29: "λ = 0.19, layer_list = 2, 8, 16" for 64 tokens)
    for b, expect_lam in ((128, 0.42), (64, 0.19)):
        layers, counts, lam = keep_plan(576, b, 32)
        assert layers == (2, 8, 16) and round(lam, 2) == expect_lam
        assert abs(2 + 6 * lam + 8 * lam**2 + 16 * lam**3 - 32 * b / 576) < 1e-9
        assert abs(layer_average(576, 32, layers, counts) - b) <= 0.5
    assert keep_plan(576, 30, 32)[1] == (1, 1, 1)  # nothing reaches 30: every count is 1
    # depth scaling: round_half_up(l·L/32), strictly increasing, within [1, L−2], collisions collapse (later count)
    assert stage_layers(40) == ((10, 20, 30), (1, 2, 3))
    assert stage_layers(28) == ((7, 14, 21), (1, 2, 3))
    assert stage_layers(8) == ((2, 4, 6), (1, 2, 3)) and stage_layers(8, (2, 8, 16)) == ((1, 2, 4), (1, 2, 3))
    assert stage_layers(4) == ((1, 2), (1, 3))
    for n, b, depth in [(36, 12, 8), (144, 40, 32), (2304, 600, 40), (24, 10, 8), (576, 500, 32)]:
        layers, counts = keep_plan(n, b, depth)[:2]
        assert abs(layer_average(n, depth, layers, counts) - b) <= 0.5, (n, b, depth)
        assert list(counts) == sorted(counts, reverse=True) and all(1 <= c <= n for c in counts)


def test_pdrop_ranks_by_the_last_row_hand_case():
    s = _strategy("pdrop")
    stage = StageSpec.llm(8, "attention", query="last")
    att = torch.tensor([[0.9, 0.9, 0.9, 0.9, 0.9, 0.9], [0.05, 0.30, 0.10, 0.30, 0.20, 0.05]])  # only the last row counts
    ctx = StageContext(stage, "x", 3, 6, (2, 3), 32, torch.randn(6, 4), torch.arange(6), torch.Generator(), attention=att)
    # b = 3 of 6 on 32 layers: 8·6 + 8·6λ + 8·6λ² + 8·max(6λ³, 1) = 32·3; 6λ³ < 1, so λ² + λ − 5/6 = 0
    sel = validate_selection(s.select(ctx), ctx)
    lam = (-1 + math.sqrt(1 + 10 / 3)) / 2
    assert abs(ctx.state["pdrop"]["lambda"] - lam) < 1e-9 and ctx.state["pdrop"]["counts"] == (3, 2, 1)  # 3.24, 1.75, 0.95
    assert sel.keep.tolist() == [1, 3, 4]  # 0.30, 0.30, 0.20
    # a stage of the other layout (llm@2 on 32 layers) is a no-op for this budget
    ctx2 = StageContext(StageSpec.llm(2, "attention"), "x", 3, 6, (2, 3), 32, torch.randn(6, 4), torch.arange(6), torch.Generator(), attention=att, state={})
    assert _strategy("pdrop").select(ctx2).keep.tolist() == list(range(6))


def test_pdrop_defaults_schedule_and_refusals():
    s = _strategy("pdrop")
    assert s.params == {"layers": (8, 16, 24), "low_layers": (2, 8, 16)}
    assert s.budget_convention == "layer_average" and s.position_policy == "contiguous" and s.default_keep == 270 / 576
    assert [st.label for st in s.schedule(ModelInfo(32, 4096))] == ["llm@2", "llm@8", "llm@16", "llm@24"]
    assert all(st.query == "last" and st.signals == {"attention"} for st in s.schedule(ModelInfo(32, 4096)))
    assert _strategy("pdrop", layers="4/12/20").params["layers"] == (4, 12, 20)  # command-line form
    for bad in ("16/8/24", "0/8/16", "8/16/31", "8/8/16", (8.5, 16)):
        with pytest.raises(UsageError, match=r"'pdrop': parameter layers=.*strictly increasing layers, each in \[1, 30\]"):
            _strategy("pdrop", layers=bad)
    with pytest.raises(UsageError, match=r"'pdrop': parameter layers='a/b' is not a tuple"):  # the base class's type check
        _strategy("pdrop", layers="a/b")
    with pytest.raises(UsageError, match=r"'pdrop'.*low_layers=.*\[1, 30\]"):
        _strategy("pdrop", low_layers=(2, 40))
    with pytest.raises(UsageError, match=r"'pdrop'.*at least 3 decoder layers"):
        s.schedule(ModelInfo(2, 64))


def test_pdrop_keeps_what_the_stock_layers_rank(arch):
    """Every stage's kept set is the top-k of that layer's last-row eager attention (the stock layers by hand).

    The reference keeps the original position ids, so the ranking rule is checked under that policy; the
    renumbering itself (pdrop's default, ``contiguous``) is tested on its own in tests/test_position_policy.py.
    """
    model, samples = arch
    budget = Budget("count", 8)
    results = _generate(model, samples, _strategy("pdrop", positions="original"), budget)
    for sample, r in zip(samples, results):
        # the counts are pinned by the plan tests; here: which tokens, at every scheduled stage
        counts = {int(label.split("@")[1]): len(kept) for label, kept in r.kept.items()}
        assert len(counts) == 4 and min(counts.values()) < r.num_visual, r.kept
        expected = pdrop_reference(model, prefill(model, sample), counts)
        assert {f"llm@{layer}": kept for layer, kept in expected.items()} == r.kept


def test_pdrop_token_counts_at_several_budgets_576(llava576):
    samples = _llava_samples(96)[:1]
    expected = {
        270: [576] * 9 + [288] * 8 + [144] * 8 + [72] * 7,  # λ = 0.5; layer l_s itself still sees the previous count
        192: [576] * 9 + [146] * 8 + [37] * 8 + [9] * 7,
        128: [576] * 3 + [242] * 6 + [101] * 8 + [43] * 15,  # layout 2/8/16
        64: [576] * 3 + [110] * 6 + [21] * 8 + [4] * 15,
    }
    for b, per_layer in expected.items():
        (r,) = _generate(llava576, samples, _strategy("pdrop"), Budget("count", b))
        assert r.tokens_per_layer == per_layer, b
    (r,) = _generate(llava576, samples, _strategy("pdrop"), Budget("default"))
    assert r.budget == 270 and r.tokens_per_layer == expected[270]


def test_pdrop_placement_effect_576(llava576):
    """The first stage keeps exactly what the official placement keeps (same layer, same inputs); later stages
    differ only because layer l_s ran on every token here. The docstring's figures are these."""
    sample = _llava_samples(96)[0]
    pre = prefill(llava576, sample)
    counts = {8: 288, 16: 144, 24: 72}
    ours = pdrop_reference(llava576, pre, counts)
    official = pdrop_reference(llava576, pre, counts, drop_before=True)
    (r,) = _generate(llava576, [sample], _strategy("pdrop", positions="original"), Budget("count", 270))
    assert r.kept["llm@8"] == ours[8] == official[8]
    assert r.kept["llm@16"] == ours[16] and r.kept["llm@24"] == ours[24]
    overlap = {layer: len(set(ours[layer]) & set(official[layer])) / counts[layer] for layer in (16, 24)}
    assert overlap[16] >= 0.95 and overlap[24] >= 0.95, overlap  # measured: 0.986 and 0.986


# --------------------------------------------------------------------------------- dart


def test_dart_core_rule_hand_case():
    """A 2-D toy: one image pivot (largest L1 norm), no text pivot, budget 3 → the two tokens most opposed to it."""
    tokens = torch.tensor([[3.0, 0.0], [1.0, 0.1], [-1.0, 0.2], [0.0, 1.0], [-0.5, -1.0], [0.9, 0.9]])
    # L1 norms 3, 1.1, 1.2, 1, 1.5, 1.8 → pivot 0 at angle 0; cosines to it: 0.995, −0.98, 0, −0.447, 0.707
    ctx = StageContext(StageSpec.llm(1), "x", 3, 6, (2, 3), 4, tokens, torch.arange(6), torch.Generator())
    sel = validate_selection(_strategy("dart", image_pivots=1, text_pivots=0).select(ctx), ctx)
    assert sel.keep.tolist() == [0, 2, 4]
    # two image pivots (0 and 5), budget 4: pivot 0 takes one (token 2, cos −0.98), then pivot 5 (angle 45°)
    # takes the least similar of tokens 1, 3, 4: cosines 0.77, 0.71, −0.95 → token 4
    ctx = StageContext(StageSpec.llm(1), "x", 4, 6, (2, 3), 4, tokens, torch.arange(6), torch.Generator())
    assert _strategy("dart", image_pivots=2, text_pivots=0).select(ctx).keep.tolist() == [0, 2, 4, 5]


def test_dart_text_pivots_come_after_the_image_hand_case():
    from tokenbench.strategies.dart import pivot_quotas

    tokens = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0], [0.7, 0.7]])
    att = torch.tensor([[0.0] * 5, [0.2] * 5, [0.1] * 5])  # text row 0 precedes the image: no attention to it
    stage = StageSpec.llm(1, "attention", "text_embeddings", query="text")

    def keep(text: list[list[float]], text_pivots: int = 1) -> list[int]:
        ctx = StageContext(stage, "x", 3, 5, (1, 5), 4, tokens, torch.arange(5), torch.Generator(), text_embeddings=torch.tensor(text), attention=att)
        return validate_selection(_strategy("dart", image_pivots=1, text_pivots=text_pivots).select(ctx), ctx).keep.tolist()

    # image pivot: token 0 (L1 2); it takes token 3 (cos −1). Text pivot: the row after the image with the
    # largest L1 norm, row 1 = (0, −3), pointing down: it takes token 1 (cos −1). Row 0 (L1 9, pointing up)
    # would have taken token 2, but it comes before the image.
    assert keep([[0.0, 9.0], [0.0, -3.0], [0.1, 0.1]]) == [0, 1, 3]
    # row 2 = (5, 5) now has the largest norm: at 45° it takes token 2 (cos −0.71, against 0.71 and 1)
    assert keep([[0.0, 9.0], [0.0, -3.0], [5.0, 5.0]]) == [0, 2, 3]
    # three text pivots asked, two rows after the image: both pivot, in sequence order (row 1, row 2), and the
    # two picks are shared 1, 1, 0 over (image pivot, row 1, row 2)
    assert keep([[0.0, 9.0], [0.0, -3.0], [5.0, 5.0]], text_pivots=3) == [0, 1, 3]
    assert pivot_quotas(124, 8) == [16] * 4 + [15] * 4 and pivot_quotas(2, 3) == [1, 1, 0]


def test_dart_defaults_schedule_and_refusals():
    s = _strategy("dart")
    assert s.params == {"k": 2, "image_pivots": 4, "text_pivots": 4}
    assert s.budget_convention == "tokens" and s.position_policy == "original" and s.default_keep == 128 / 576
    assert s.schedule(ModelInfo(32, 4096)) == (StageSpec.llm(1, "attention", "text_embeddings", query="text"),)
    assert _strategy("dart", text_pivots=0).schedule(ModelInfo(32, 4096)) == (StageSpec.llm(1),)
    assert _strategy("dart", k="3").params["k"] == 3
    for key, bad, low in (("k", 0, 1), ("image_pivots", 0, 1), ("text_pivots", -1, 0), ("k", 1.5, 1)):
        with pytest.raises(UsageError, match=rf"'dart'.*{key}=.*>= {low}"):
            _strategy("dart", **{key: bad})
    with pytest.raises(UsageError, match=r"'dart'.*k=4 must be in \[1, 3\]"):
        _strategy("dart", k=4).schedule(ModelInfo(4, 64))
    ctx = StageContext.for_testing(num_visual=16, budget=3, stage=StageSpec.llm(1, "attention", "text_embeddings", query="text"))
    with pytest.raises(BudgetError, match=r"'dart'.*image_pivots=4 must be in \[1, 3\]"):
        s.select(ctx)


def test_dart_keeps_what_the_published_rule_keeps(arch):
    """Kept set = the rule re-derived from the stock layers by hand, on both architectures."""
    model, samples = arch
    for k, b, kw in ((2, 6, {}), (3, 8, {}), (2, 7, {"text_pivots": 0}), (1, 5, {"image_pivots": 2, "text_pivots": 3})):
        results = _generate(model, samples, _strategy("dart", k=k, **kw), Budget("count", b))
        for sample, r in zip(samples, results):
            expected = dart_reference(model, prefill(model, sample), k, b, kw.get("image_pivots", 4), kw.get("text_pivots", 4))
            assert r.kept == {f"llm@{k - 1}": expected}, (k, b, kw)


@pytest.mark.parametrize("b", [4, 9, 17, 36])
def test_dart_exact_counts(llava, b):
    results = _generate(llava, _llava_samples(48), _strategy("dart"), Budget("count", b))
    for r in results:
        assert r.tokens_per_layer == [36] * 2 + [b] * (LLAVA_LAYERS - 2)
        assert len(r.kept["llm@1"]) == b and r.merged == {"llm@1": 0}
    (r, _) = _generate(llava, _llava_samples(48), _strategy("dart"), Budget("default"))
    assert r.budget == round(36 * 128 / 576) == 8 and r.tokens_per_layer[-1] == 8


def test_dart_proxy_effect_576(llava576):
    """The proxies (hidden-state instead of key norms, input embeddings for the text pivots, no final norm)
    against the official rule on the 576-token model; the docstring's figure is this overlap."""
    sample = _llava_samples(96)[0]
    pre = prefill(llava576, sample)
    official = dart_official(llava576, pre, 2, 128)
    assert len(official) == 132  # 4 image pivots + 8 pivots × ⌊128/8⌋
    (r,) = _generate(llava576, [sample], _strategy("dart"), Budget("count", 128))
    assert r.kept["llm@1"] == dart_reference(llava576, pre, 2, 128)
    overlap = len(set(r.kept["llm@1"]) & set(official)) / 128
    assert overlap >= 0.4, overlap  # measured: 0.469 (chance: 132/576 = 0.23)


# ----------------------------------------------------------------------- both: determinism, batches


@pytest.mark.parametrize("name", ["pdrop", "dart"])
def test_deterministic_and_batch_equals_single(arch, name):
    model, samples = arch
    budget = Budget("count", 6)
    batch = _generate(model, samples, _strategy(name), budget)
    again = _generate(model, samples, _strategy(name), budget)
    assert [r.kept for r in batch] == [r.kept for r in again]
    assert [r.tokens_per_layer for r in batch] == [r.tokens_per_layer for r in again]
    for sample, r in zip(samples, batch):
        (alone,) = _generate(model, [sample], _strategy(name), budget)
        assert alone.kept == r.kept and alone.tokens_per_layer == r.tokens_per_layer


def test_registered_descriptions_equal_the_classes():
    from tokenbench.strategies import BUILTINS

    for name in ("pdrop", "dart"):
        (entry,) = [e for e in BUILTINS if e[0] == name]
        cls = get_registry().load("strategies", name)
        assert entry[2] == cls.description and cls.name == name
