"""Pins ``visionzip`` and ``vispruner`` to their official code (see the two modules' docstrings).

The reference selections below are written in plain Python from the published
algorithms (dvlab-research/VisionZip ``visionzip/clip_encoder.py``, Theia-4869/VisPruner
``llava/model/llava_arch.py``), without the strategies' helpers. On a tiny random LLaVA
they start from the stock model's eager [CLS] attention and projected features; on a
tiny random Qwen2.5-VL (no [CLS]) from the signals the strategy saw, captured by a
wrapper strategy. Small hand-made cases pin the core rules.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenbench import UsageError, get_registry
from tokenbench.budget import Budget
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy, validate_selection
from tokenbench.task import Sample

NAMES = ("visionzip", "vispruner")
QUESTIONS = ("what colour is the square ?", "how many red circle are there left of the blue square in this picture ?")


def _strategy(name: str, **params: Any) -> Strategy:
    return get_registry().load("strategies", name)(**params)


# ------------------------------------------------------------------ plain-Python references


def _cos(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _ranked(saliency: list[float]) -> list[int]:
    return sorted(range(len(saliency)), key=lambda i: (-saliency[i], i))


def ref_visionzip(tokens: list[list[float]], saliency: list[float], budget: int, share: float = 27 / 32) -> tuple[list[int], list[list[float]]]:
    """(dominant indices ascending, contextual tokens in target order), as VisionZip's clip_encoder.py."""
    n, dim = len(tokens), len(tokens[0])
    if budget >= n:
        return list(range(n)), []
    dominant = sorted(_ranked(saliency)[: int(math.floor(budget * share + 0.5))])
    contextual = budget - len(dominant)
    if contextual == 0:
        return dominant, []
    rest = [i for i in range(n) if i not in dominant]
    step = max(1, len(rest) // contextual)
    targets = rest[::step][:contextual]
    members: dict[int, list[int]] = {t: [] for t in targets}
    for i in rest:
        if i not in members:
            sims = [_cos(tokens[i], tokens[t]) for t in targets]
            members[targets[max(range(contextual), key=lambda j: (sims[j], -j))]].append(i)
    out = []
    for t in targets:
        m = members[t]
        out.append([tokens[t][k] + (sum(tokens[i][k] for i in m) / len(m) if m else 0.0) for k in range(dim)])
    return dominant, out


def ref_vispruner(tokens: list[list[float]], saliency: list[float], budget: int, ratio: float = 0.5, step: int = 8) -> list[int]:
    """Kept indices ascending, as VisPruner's llava_arch.py encode_images."""
    n = len(tokens)
    if budget >= n:
        return list(range(n))
    ranked = _ranked(saliency)
    important = int(budget * ratio)
    want = budget - important
    residual = ranked[important:]
    if want == 0:
        return sorted(ranked[:important])
    while len(residual) > want:
        drop = min(step, len(residual) - want)
        evens, odds = residual[0::2], residual[1::2]
        score = {i: max(_cos(tokens[i], tokens[j]) for j in odds) for i in evens}
        residual = sorted(evens, key=lambda i: -score[i])[drop:] + odds  # sorted() is stable: ties keep list order
    return sorted(ranked[:important] + residual)


class Capture(Strategy):
    """Runs another strategy and records every context it saw and the selection it made."""

    name = "capture"

    def __init__(self, inner: Strategy) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[StageContext, Selection]] = []

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return self.inner.schedule(model)

    def select(self, ctx: StageContext) -> Selection:
        sel = self.inner.select(ctx)
        self.seen.append((ctx, sel))
        return sel


# ----------------------------------------------------------------------------- fixtures


def _images(sizes: list[tuple[int, int]]) -> list[Any]:
    from PIL import Image

    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for w, h in sizes]


def _samples(sizes: list[tuple[int, int]]) -> list[Sample]:
    return [Sample(id=f"s{i}", image=im, question=q, answers=("red",)) for i, (im, q) in enumerate(zip(_images(sizes), QUESTIONS))]


LLAVA_SIZES = [(48, 48), (48, 48)]  # 6×6 = 36 visual tokens each
QWEN_SIZES = [(48, 32), (24, 24)]  # 4×6 = 24 and 3×3 = 9 visual tokens: a left-padded batch


@pytest.fixture(scope="module")
def llava(tiny_llava: Path) -> Any:
    return get_registry().load("adapters", "llava").load(str(tiny_llava))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tokenbench.testing import tiny_qwen2_5_vl_checkpoint

    path = tiny_qwen2_5_vl_checkpoint(tmp_path_factory.mktemp("qwen") / "ck", layers=3)
    return get_registry().load("adapters", "qwen2_5_vl").load(str(path))


@pytest.fixture(scope="module")
def stock_signals(tiny_llava: Path, llava: Any) -> list[tuple[list[list[float]], list[float]]]:
    """Per LLaVA sample: projected features and the [CLS] attention of feature layer −2, from the stock eager model."""
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(str(tiny_llava), attn_implementation="eager").eval()
    assert hf.config.vision_feature_layer == -2
    out = []
    for s in _samples(LLAVA_SIZES):
        pixels = llava.processor(images=[s.load_image()], text=[llava.chat_prompt(s.question)], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            vis = hf.model.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
            feats = hf.model.multi_modal_projector(vis.hidden_states[-2][:, 1:])[0]
        cls_attention = vis.attentions[-2][0, :, 0, 1:].float().mean(dim=0)  # the layer that outputs hidden_states[-2]
        out.append((feats.tolist(), cls_attention.tolist()))
    return out


def _generate(adapter: Any, samples: list[Sample], strategy: Strategy, budget: int) -> list[Any]:
    return adapter.generate(samples, [s.question for s in samples], strategy, Budget("count", budget), seed=0, max_new_tokens=2)


def _same_up_to_near_ties(kept: list[int], expected: list[int], scores: list[float]) -> bool:
    """Equal, or differing only where stock and adapter scores are within float rounding of each other."""
    if kept == expected:
        return True
    diff = set(kept) ^ set(expected)
    return all(min(abs(scores[i] - scores[j]) for j in range(len(scores)) if j != i) < 1e-6 for i in diff)


# ---------------------------------------------------------------- LLaVA: stock signals


@pytest.mark.parametrize("budget", [5, 12, 20])
def test_visionzip_llava_matches_the_published_algorithm(llava: Any, stock_signals: Any, budget: int) -> None:
    cap = Capture(_strategy("visionzip"))
    results = _generate(llava, _samples(LLAVA_SIZES), cap, budget)
    for res, (_, sel), (tokens, cls_attention) in zip(results, cap.seen, stock_signals):
        dominant, contextual = ref_visionzip(tokens, cls_attention, budget)
        assert _same_up_to_near_ties(res.kept["vision"], dominant, cls_attention)
        assert len(dominant) == math.floor(budget * 27 / 32 + 0.5) and res.merged["vision"] == len(contextual)
        assert sel.merged is not None and sel.merged_positions is not None
        if res.kept["vision"] == dominant:
            assert torch.allclose(sel.merged.float(), torch.tensor(contextual), atol=1e-4)
        assert sel.merged_positions.tolist() == [35] * len(contextual)  # after the last visual token: the official order
        assert res.tokens_per_layer == [budget] * 4


@pytest.mark.parametrize("budget,ratio", [(5, 0.5), (12, 0.5), (20, 0.5), (12, 0.25), (12, 1.0), (12, 0.0)])
def test_vispruner_llava_matches_the_published_algorithm(llava: Any, stock_signals: Any, budget: int, ratio: float) -> None:
    results = _generate(llava, _samples(LLAVA_SIZES), _strategy("vispruner", important_ratio=ratio), budget)
    for res, (tokens, cls_attention) in zip(results, stock_signals):
        expected = ref_vispruner(tokens, cls_attention, budget, ratio)
        assert _same_up_to_near_ties(res.kept["vision"], expected, cls_attention)
        assert res.merged["vision"] == 0 and res.tokens_per_layer == [budget] * 4


# -------------------------------------------------------------- Qwen2.5-VL: captured signals


@pytest.mark.parametrize("name", NAMES)
def test_qwen2_5_vl_matches_the_published_algorithm(qwen: Any, name: str) -> None:
    budget = 6
    cap = Capture(_strategy(name))
    results = _generate(qwen, _samples(QWEN_SIZES), cap, budget)
    assert [ctx.num_visual for ctx, _ in cap.seen] == [24, 9]
    for res, (ctx, sel) in zip(results, cap.seen):
        tokens, saliency = ctx.tokens.float().tolist(), ctx.require("saliency").float().tolist()
        if name == "visionzip":
            dominant, contextual = ref_visionzip(tokens, saliency, budget)
            assert res.kept["vision"] == dominant and res.merged["vision"] == len(contextual) == 1
            assert sel.merged is not None and torch.allclose(sel.merged.float(), torch.tensor(contextual), atol=1e-4)
        else:
            assert res.kept["vision"] == ref_vispruner(tokens, saliency, budget)
        assert res.tokens_per_layer == [budget] * 3


# ------------------------------------------------------------------ counts, determinism, batch


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("budget", [1, 2, 7, 63, 64, 100, 128, 160, 192, 575, 576])
def test_exact_token_counts(name: str, budget: int) -> None:
    ctx = StageContext.for_testing(num_visual=576, budget=budget, dim=16)
    sel = validate_selection(_strategy(name).select(ctx), ctx)
    assert sel.count == budget
    if name == "visionzip":  # the published splits (Tables 8 and 9 of arXiv 2412.04467): 27/32 dominant
        published = {64: (54, 10), 128: (108, 20), 192: (162, 30), 160: (135, 25)}
        if budget in published:
            assert (sel.keep.numel(), sel.count - sel.keep.numel()) == published[budget]


@pytest.mark.parametrize("name", NAMES)
def test_llava_budgets_end_to_end(llava: Any, name: str) -> None:
    for budget in (1, 4, 17, 35, 36):
        for res in _generate(llava, _samples(LLAVA_SIZES), _strategy(name), budget):
            assert res.tokens_per_layer == [budget] * 4, (name, budget)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(llava: Any, name: str) -> None:
    runs = []
    for _ in range(2):
        cap = Capture(_strategy(name))
        results = _generate(llava, _samples(LLAVA_SIZES), cap, 9)
        runs.append(([(r.kept, r.merged, r.prediction) for r in results], [s.merged for _, s in cap.seen]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model", ["llava", "qwen"])
def test_batch_of_two_equals_one_by_one(request: pytest.FixtureRequest, name: str, model: str) -> None:
    adapter = request.getfixturevalue(model)
    samples = _samples(LLAVA_SIZES if model == "llava" else QWEN_SIZES)
    batch = _generate(adapter, samples, _strategy(name), 5)
    for s, r in zip(samples, batch):
        (alone,) = _generate(adapter, [s], _strategy(name), 5)
        assert (alone.kept, alone.merged, alone.prediction) == (r.kept, r.merged, r.prediction)


# ------------------------------------------------------------------- hand-computed small cases


def _ctx(tokens: list[list[float]], saliency: list[float], budget: int) -> StageContext:
    n = len(tokens)
    return StageContext(
        StageSpec.vision("saliency"), "toy", budget, n, (1, n), 4, torch.tensor(tokens), torch.arange(n), torch.Generator(), saliency=torch.tensor(saliency)
    )


def test_visionzip_hand_computed() -> None:
    # saliency ranks tokens 0 and 2 dominant; the rest in order is [1, 3, 4, 5, 6]
    tokens = [[5.0, 5.0], [1.0, 0.0], [-1.0, 2.0], [2.0, 0.2], [0.0, 1.0], [0.1, 3.0], [4.0, 0.0]]
    saliency = [0.30, 0.05, 0.25, 0.10, 0.15, 0.10, 0.05]
    s = _strategy("visionzip", dominant_share=0.5)
    # b = 4: 2 dominant + 2 contextual; step = 5 // 2 = 2, targets rest[0] = 1 and rest[2] = 4;
    # 3 and 6 point along x (join 1), 5 along y (joins 4); contextual = target + mean of its members
    sel = validate_selection(s.select(_ctx(tokens, saliency, 4)), _ctx(tokens, saliency, 4))
    assert sel.keep.tolist() == [0, 2] and sel.merged_positions is not None and sel.merged_positions.tolist() == [6, 6]
    assert sel.merged is not None and torch.allclose(sel.merged, torch.tensor([[1.0 + 3.0, 0.0 + 0.1], [0.0 + 0.1, 1.0 + 3.0]]))
    # b = 5 with a 0.4 share: ⌊2.5⌋ = 2 dominant, 3 contextual; step = 5 // 3 = 1, targets 1, 3, 4;
    # 5 joins 4, 6 joins 1 (cos 1 vs 3's 0.995), 3 keeps itself alone
    sel = _strategy("visionzip", dominant_share=0.4).select(_ctx(tokens, saliency, 5))
    assert sel.keep.tolist() == [0, 2]
    assert sel.merged is not None and torch.allclose(sel.merged, torch.tensor([[5.0, 0.0], [2.0, 0.2], [0.1, 4.0]]))
    # share 1: only dominant tokens; share 0: only contextual ones
    assert _strategy("visionzip", dominant_share=1.0).select(_ctx(tokens, saliency, 3)).merged is None
    only = _strategy("visionzip", dominant_share=0.0).select(_ctx(tokens, saliency, 2))
    assert only.keep.numel() == 0 and only.merged is not None and only.merged.shape == (2, 2)


def _angles(degrees: list[float]) -> list[list[float]]:
    return [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees]


def test_vispruner_keeps_one_token_per_duplicate_pair() -> None:
    # token 0 is the important one; the residual list (saliency order) p0..p7 = tokens 1..8 holds
    # three near-duplicate pairs (1°/0°, 61°/60°, 121°/120°) split over even and odd positions,
    # a unique token at 270° (p6, even) and one at 330° (p7, odd)
    tokens = _angles([200.0, 1.0, 0.0, 61.0, 60.0, 121.0, 120.0, 270.0, 330.0])
    saliency = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    # b = 6, ratio 0.2: int(1.2) = 1 important, 5 diverse; one round drops min(8, 8 − 5) = 3 of the 4
    # even-position tokens, those most similar to an odd one (the duplicates, cos ≈ 1); 270° scores
    # only cos 60° = 0.5 (to 330°) and stays: one token per direction
    sel = _strategy("vispruner", important_ratio=0.2).select(_ctx(tokens, saliency, 6))
    assert sel.keep.tolist() == [0, 2, 4, 6, 7, 8]
    assert ref_vispruner(tokens, saliency, 6, 0.2) == [0, 2, 4, 6, 7, 8]


def test_vispruner_rounds_by_hand() -> None:
    # important: token 0; residual in saliency order p0..p4 = tokens 1..5 at 0°, 10°, 85°, 100°, 45°
    tokens = _angles([200.0, 0.0, 10.0, 85.0, 100.0, 45.0])
    saliency = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1]
    ctx = _ctx(tokens, saliency, 3)  # ratio 0.4: int(1.2) = 1 important, 2 diverse
    # default step 8: one round drops min(8, 3) = 3 > the 3 evens (0°, 85°, 45°): the odds 10°, 100° remain
    assert _strategy("vispruner", important_ratio=0.4).select(ctx).keep.tolist() == [0, 2, 4]
    # step 1, round by round (evens scored by their best cosine to an odd):
    #   [0°, 10°, 85°, 100°, 45°]: 0° .985, 85° .966, 45° .819 → drop 0° → [85°, 45°, 10°, 100°]
    #   [85°, 45°, 10°, 100°]: 85° .966, 10° .819 → drop 85° → [10°, 45°, 100°]
    #   [10°, 45°, 100°]: 10° .819, 100° .574 → drop 10° → [100°, 45°]
    assert _strategy("vispruner", important_ratio=0.4, prune_step=1).select(ctx).keep.tolist() == [0, 4, 5]
    assert ref_vispruner(tokens, saliency, 3, 0.4, 1) == [0, 4, 5] and ref_vispruner(tokens, saliency, 3, 0.4) == [0, 2, 4]


# ------------------------------------------------------------------------ parameters, metadata


@pytest.mark.parametrize(
    "name,params,parameter,valid",
    [
        ("visionzip", {"dominant_share": 1.5}, "dominant_share", "[0, 1]"),
        ("visionzip", {"dominant_share": -0.1}, "dominant_share", "[0, 1]"),
        ("visionzip", {"dominant_share": "nan"}, "dominant_share", "[0, 1]"),
        ("vispruner", {"important_ratio": 1.01}, "important_ratio", "[0, 1]"),
        ("vispruner", {"important_ratio": "-1"}, "important_ratio", "[0, 1]"),
        ("vispruner", {"prune_step": 0}, "prune_step", ">= 1"),
        ("vispruner", {"prune_step": "0"}, "prune_step", ">= 1"),
        ("vispruner", {"prune_step": 2.5}, "prune_step", ">= 1"),
    ],
)
def test_out_of_range_parameters_are_refused(name: str, params: dict[str, Any], parameter: str, valid: str) -> None:
    with pytest.raises(UsageError) as err:
        _strategy(name, **params)
    message = str(err.value)
    assert name in message and parameter in message and valid in message and "\n" not in message


@pytest.mark.parametrize("name", NAMES)
def test_unknown_and_malformed_parameters_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="has no parameter"):
        _strategy(name, ratio=0.5)
    key = "dominant_share" if name == "visionzip" else "important_ratio"
    with pytest.raises(UsageError, match="is not a float"):
        _strategy(name, **{key: "half"})
    assert _strategy(name, **{key: "0.75"}).params[key] == 0.75  # strings from the command line are coerced


def test_defaults_and_metadata() -> None:
    zip_, pruner = _strategy("visionzip"), _strategy("vispruner")
    assert zip_.params == {"dominant_share": 0.84375} and zip_.default_keep == 64 / 576
    assert pruner.params == {"important_ratio": 0.5, "prune_step": 8} and pruner.default_keep == 128 / 576
    for s in (zip_, pruner):
        assert type(s).position_policy == "contiguous"  # type: ignore[attr-defined]
        assert s.budget_convention == "tokens" and s.exact_budget and not s.keeps_all
        assert s.schedule(ModelInfo(32, 4096)) == (StageSpec.vision("saliency"),)
        assert get_registry().entry("strategies", s.name).description == type(s).description
