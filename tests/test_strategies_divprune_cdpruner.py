"""Pins ``divprune`` and ``cdpruner`` to their published rules, end to end on tiny LLaVA and Qwen2.5-VL models.

The references below are written from the algorithms, not from the strategies' helpers:
DivPrune's greedy max–min cosine diversity as plain loops over a float64 distance
matrix; CDPruner's greedy MAP as "add the token that maximises the determinant of the
kernel's submatrix" (float64 ``det``), which the strategy computes with Cholesky-style
recurrences instead. The features come from the stock ``transformers`` models, not from
the adapter; a wrapper strategy checks that they are what the strategy saw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenbench.budget import Budget
from tokenbench.errors import PluginError, UsageError
from tokenbench.registry import get_registry
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy, validate_selection
from tokenbench.task import Sample

QUESTIONS = ("what colour is the square ?", "how many red circle are there left of the blue square in this picture ?")
QWEN_SIZES = ((48, 32), (24, 24))  # (width, height) -> 4×6 and 3×3 merged-token grids


# ------------------------------------------------------------------ references


def ref_divprune(feats: torch.Tensor, b: int) -> list[int]:
    """Greedy max–min diversity in cosine distance: the most isolated token, then farthest-from-the-set."""
    x = feats.double()
    n = x.shape[0]
    unit = [x[i] / x[i].norm() for i in range(n)]
    dist = [[1.0 - float(unit[i] @ unit[j]) for j in range(n)] for i in range(n)]
    isolation = [min(dist[i][j] for j in range(n) if j != i) for i in range(n)]
    chosen = [max(range(n), key=lambda i: (isolation[i], -i))]
    while len(chosen) < b:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(dist[s][i] for s in chosen), -i)))
    return sorted(chosen)


def ref_relevance(feats: torch.Tensor, text: torch.Tensor, negate: bool = False) -> list[float]:
    """Mean cosine to the text rows (negated: the release's sign), min–max normalised with the release's +1e-6."""
    v, t = feats.double(), text.double()
    raw = []
    for i in range(v.shape[0]):
        cos = [float(v[i] @ t[j] / (v[i].norm() * t[j].norm())) for j in range(t.shape[0])]
        raw.append((-1.0 if negate else 1.0) * sum(cos) / len(cos))
    lo, hi = min(raw), max(raw)
    return [(r - lo + 1e-6) / (hi - lo) for r in raw]


def ref_cdpruner(feats: torch.Tensor, text: torch.Tensor, b: int, negate: bool = False) -> list[int]:
    """Greedy MAP of the DPP with kernel r_i·cos(v_i, v_j)·r_j: each step adds the token maximising det(L_S)."""
    r = torch.tensor(ref_relevance(feats, text, negate), dtype=torch.float64)
    v = feats.double()
    unit = v / v.norm(dim=1, keepdim=True)
    kernel = r[:, None] * (unit @ unit.T) * r[None, :]
    chosen: list[int] = []
    while len(chosen) < b:
        best, best_det = -1, -math.inf
        for j in range(v.shape[0]):
            if j in chosen:
                continue
            idx = torch.tensor(chosen + [j])
            det = float(torch.linalg.det(kernel[idx][:, idx]))
            if det > best_det:
                best, best_det = j, det
        chosen.append(best)
    return sorted(chosen)


class Capture(Strategy):
    """Runs ``inner`` and records the vision-stage tokens and text embeddings it was given."""

    name = "capture"
    description = "records the stage contexts of another strategy"

    def __init__(self, inner: Strategy) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return self.inner.schedule(model)

    def select(self, ctx: StageContext) -> Selection:
        self.seen.append((ctx.tokens.detach().clone(), None if ctx.text_embeddings is None else ctx.text_embeddings.detach().clone()))
        return self.inner.select(ctx)


def _strategy(name: str, **params: Any) -> Strategy:
    return get_registry().load("strategies", name)(**params)


# ------------------------------------------------------------------ tiny models


def _images(sizes: tuple[tuple[int, int], ...]) -> list[Any]:
    from PIL import Image

    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for w, h in sizes]


def _samples(sizes: tuple[tuple[int, int], ...]) -> list[Sample]:
    return [Sample(id=f"s{i}", image=im, question=q, answers=("red",)) for i, (im, q) in enumerate(zip(_images(sizes), QUESTIONS))]


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A 2-layer tiny LLaVA with a 6×6 grid (36 visual tokens) through the registry's adapter, and the stock model."""
    from transformers import LlavaForConditionalGeneration

    from tokenbench.testing import tiny_llava_checkpoint

    path = tiny_llava_checkpoint(tmp_path_factory.mktemp("llava") / "ck", image_size=48, patch_size=8, layers=2)
    adapter = get_registry().load("adapters", "llava").load(str(path))
    return adapter, LlavaForConditionalGeneration.from_pretrained(str(path)).eval()


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A 2-layer tiny Qwen2.5-VL (4×6 and 3×3 merged grids for the two images), adapter and stock model."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tokenbench.testing import tiny_qwen2_5_vl_checkpoint

    path = tiny_qwen2_5_vl_checkpoint(tmp_path_factory.mktemp("qwen") / "ck", layers=2)
    adapter = get_registry().load("adapters", "qwen2_5_vl").load(str(path))
    adapter.eos_ids = set()
    return adapter, Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()


def _stock_signals(family: str, adapter: Any, stock: Any, samples: list[Sample]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample: the projected visual tokens and the prompt's text-token input embeddings, from the stock model."""
    out = []
    for s in samples:
        enc = adapter.processor(images=[s.load_image()], text=[adapter.chat_prompt(s.question)], return_tensors="pt")
        ids = enc["input_ids"][0]
        image_token = stock.config.image_token_id
        with torch.no_grad():
            if family == "llava":
                cfg = stock.config
                feats = stock.model.get_image_features(
                    pixel_values=enc["pixel_values"],
                    vision_feature_layer=cfg.vision_feature_layer,
                    vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                    return_dict=True,
                ).pooler_output[0]
            else:
                feats = stock.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"], return_dict=True).pooler_output[0]
            text = stock.get_input_embeddings()(ids[ids != image_token])
        out.append((feats.float(), text.float()))
    return out


def _generate(adapter: Any, samples: list[Sample], strategy: Strategy, budget: Budget) -> list[Any]:
    return adapter.generate(samples, [s.question for s in samples], strategy, budget, seed=0, max_new_tokens=2)


FAMILIES = {"llava": ((48, 48), (48, 48)), "qwen": QWEN_SIZES}


@pytest.fixture(params=sorted(FAMILIES))
def model(request: pytest.FixtureRequest) -> tuple[str, Any, Any, list[Sample]]:
    adapter, stock = request.getfixturevalue(request.param)
    return request.param, adapter, stock, _samples(FAMILIES[request.param])


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 0.9])
def test_divprune_keeps_the_max_min_diverse_set(model: tuple[str, Any, Any, list[Sample]], keep: float) -> None:
    family, adapter, stock, samples = model
    capture = Capture(_strategy("divprune"))
    results = _generate(adapter, samples, capture, Budget("fraction", keep))
    for (feats, _), (seen, _), r in zip(_stock_signals(family, adapter, stock, samples), capture.seen, results):
        torch.testing.assert_close(seen.float(), feats, atol=1e-5, rtol=0)  # the strategy saw the stock features
        b = max(1, round(keep * r.num_visual))
        assert r.kept["vision"] == ref_divprune(feats, b)
        assert r.tokens_per_layer == [b] * len(r.tokens_per_layer)  # exact budget at every layer


@pytest.mark.parametrize("negate", [True, False])
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 0.9])
def test_cdpruner_keeps_the_greedy_map_of_the_conditional_dpp(model: tuple[str, Any, Any, list[Sample]], keep: float, negate: bool) -> None:
    family, adapter, stock, samples = model
    capture = Capture(_strategy("cdpruner", negate=negate))
    results = _generate(adapter, samples, capture, Budget("fraction", keep))
    for (feats, text), (seen, seen_text), r in zip(_stock_signals(family, adapter, stock, samples), capture.seen, results):
        torch.testing.assert_close(seen.float(), feats, atol=1e-5, rtol=0)
        assert seen_text is not None
        torch.testing.assert_close(seen_text.float(), text, atol=1e-6, rtol=0)
        b = max(1, round(keep * r.num_visual))
        assert r.kept["vision"] == ref_cdpruner(feats, text, b, negate)
        assert r.tokens_per_layer == [b] * len(r.tokens_per_layer)


@pytest.mark.parametrize("name", ["divprune", "cdpruner"])
def test_exact_counts_determinism_and_batch_equals_single(model: tuple[str, Any, Any, list[Sample]], name: str) -> None:
    _, adapter, _, samples = model
    smallest = min(int(r.num_visual) for r in _generate(adapter, samples, _strategy("baseline"), Budget("fraction", 1.0)))
    for b in (1, 3, smallest - 1, smallest):
        batch = _generate(adapter, samples, _strategy(name), Budget("count", b))
        again = _generate(adapter, samples, _strategy(name), Budget("count", b))
        assert [r.kept for r in batch] == [r.kept for r in again] and [r.prediction for r in batch] == [r.prediction for r in again]
        for s, r in zip(samples, batch):
            assert len(r.kept["vision"]) == b and r.tokens_per_layer == [b] * len(r.tokens_per_layer)
            (alone,) = _generate(adapter, [s], _strategy(name), Budget("count", b))
            assert alone.kept == r.kept


def test_default_budgets(llava: tuple[Any, Any]) -> None:
    adapter, _ = llava
    samples = _samples(FAMILIES["llava"])
    (r,) = _generate(adapter, samples[:1], _strategy("divprune"), Budget("default"))
    assert r.tokens_per_layer == [round(0.098 * 36)] * 2  # the released SUBSET_RATIO: 4 of 36 (56 of 576)
    (r,) = _generate(adapter, samples[:1], _strategy("cdpruner"), Budget("default"))
    assert r.tokens_per_layer == [round(128 / 576 * 36)] * 2  # 8 of 36 (128 of 576)


def test_cdpruner_sign_on_the_reference_model() -> None:
    """Why the default is the plain sign: with the LM-embedding relevance, the release's negation keeps anti-relevant tokens."""
    from tokenbench.task import stratified_subset

    registry = get_registry()
    adapter = registry.load("adapters", "llava").load(registry.load("models", "reference").location())
    task = registry.load("tasks", "shapes")()
    samples = stratified_subset(task.load(), 24, seed=0)
    prompts = [task.prompt(s, adapter.family) for s in samples]

    def recall(strategy: Strategy) -> float:
        results = adapter.generate(samples, prompts, strategy, Budget("count", 16), seed=0, max_new_tokens=1)
        hits = [len(set(r.kept["vision"]) & set(rel)) / len(rel) for s, r in zip(samples, results) if (rel := task.relevant_tokens(s, r.grid))]
        return sum(hits) / len(hits)

    plain, negated, random = recall(_strategy("cdpruner")), recall(_strategy("cdpruner", negate=True)), recall(_strategy("random"))
    assert plain > 0.8 and plain > negated + 0.3 and plain > random + 0.3, (plain, negated, random)


# ------------------------------------------------------------------ hand-computed cases


def _ctx(tokens: list[list[float]], budget: int, text: list[list[float]] | None = None) -> StageContext:
    x = torch.tensor(tokens)
    stage = StageSpec.vision("text_embeddings") if text is not None else StageSpec.vision()
    return StageContext(
        stage,
        "hand",
        budget,
        x.shape[0],
        (1, x.shape[0]),
        4,
        x,
        torch.arange(x.shape[0]),
        torch.Generator(),
        text_embeddings=None if text is None else torch.tensor(text),
    )


def _angles(degrees: list[float]) -> list[list[float]]:
    return [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees]


def test_divprune_two_dimensional_toy() -> None:
    # cosine distance depends only on the angle between tokens: A 0°, B 10°, C 90°, D 95°, E 200° (norms vary)
    tokens = [[2 * v for v in p] if i % 2 else p for i, p in enumerate(_angles([0, 10, 90, 95, 200]))]
    s = _strategy("divprune")
    # nearest-neighbour angles: A 10, B 10, C 5, D 5, E 105 (to D) -> E is the most isolated
    assert s.select(_ctx(tokens, 1)).keep.tolist() == [4]
    # angle to {E}: A 160, B 170, C 110, D 105 -> B
    assert s.select(_ctx(tokens, 2)).keep.tolist() == [1, 4]
    # angle to {E, B}: A 10, C 80, D 85 -> D; then to {E, B, D}: A 10, C 5 -> A
    assert s.select(_ctx(tokens, 3)).keep.tolist() == [1, 3, 4]
    assert s.select(_ctx(tokens, 4)).keep.tolist() == [0, 1, 3, 4]
    assert s.select(_ctx(tokens, 5)).keep.tolist() == [0, 1, 2, 3, 4]


def test_divprune_ties_and_duplicates() -> None:
    s = _strategy("divprune")
    # four tokens on the axes: every nearest-neighbour distance is 1 (90°), the tie goes to the lower index (0); then 180° away
    axes = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    assert s.select(_ctx(axes, 1)).keep.tolist() == [0]
    assert s.select(_ctx(axes, 2)).keep.tolist() == [0, 2]
    # exact duplicates of one direction (0, 1, 2, 5): isolation 0 for them, 1 for tokens 3 and 4 (tie -> 3);
    # then distance to {3}: 1 for all (tie -> 0); then to {3, 0}: 1 for token 4, 0 for the duplicates
    dup = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.0]]
    expected = {1: [3], 2: [0, 3], 3: [0, 3, 4], 4: [0, 1, 3, 4], 5: [0, 1, 2, 3, 4], 6: [0, 1, 2, 3, 4, 5]}
    for b, keep in expected.items():
        sel = validate_selection(s.select(_ctx(dup, b)), _ctx(dup, b))
        assert sel.keep.tolist() == keep, b  # a duplicate never comes before a distinct token; always b distinct


def test_cdpruner_three_dimensional_toy() -> None:
    # x1 is the most relevant; x0 lies in the plane of x1 and x2, so once both are kept it adds nothing
    tokens = [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]
    t = 1 / math.sqrt(2)
    # raw relevance cos(x, (1,1,0)/√2) = (.7071, .9899, .7071, 0, -.7071); min–max: r = (5/6, 1, 5/6, 5/12, ≈0)
    r = _strategy("cdpruner", negate=False).select(_ctx(tokens, 3, [[t, t, 0.0]])).scores
    torch.testing.assert_close(r, torch.tensor([5 / 6, 1.0, 5 / 6, 5 / 12, 0.0]), atol=1e-5, rtol=0)
    for negate, text in ((False, [[t, t, 0.0]]), (True, [[-t, -t, 0.0]])):  # the release negates: flip the text, same r
        s = _strategy("cdpruner", negate=negate)
        # gains: r² = (.694, 1, .694, .174, 0) -> x1; given x1: r²(1 − cos²) = (.25, .444, .174, ≈0) -> x2;
        # given x1, x2 (the xy-plane): x0 and x4 gain 0, x3 gains .174 -> x3, not the more relevant x0
        assert s.select(_ctx(tokens, 1, text)).keep.tolist() == [1]
        assert s.select(_ctx(tokens, 2, text)).keep.tolist() == [1, 2]
        assert s.select(_ctx(tokens, 3, text)).keep.tolist() == [1, 2, 3]
    # top-3 relevance would keep x0 instead of x3
    assert sorted(torch.sort(r, descending=True, stable=True).indices[:3].tolist()) == [0, 1, 2]


def test_cdpruner_degenerate_kernels() -> None:
    s = _strategy("cdpruner", negate=False)
    # a zero text embedding makes every cosine 0: the release divides by max − min = 0; here r = 1, a plain DPP on S
    tokens = [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    flat = s.select(_ctx(tokens, 3, [[0.0, 0.0, 0.0]]))
    assert flat.scores is not None and flat.scores.tolist() == [1.0] * 4
    kept = set(flat.keep.tolist())
    assert len(kept & {0, 1}) == 1 and {2, 3} <= kept  # x0 and x1 point almost the same way: one of them
    # the rank is used up after two orthogonal tokens (the rest are all-zero): the slots are filled by relevance
    zero = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    for b in range(1, 6):
        ctx = _ctx(zero, b, [[1.0, 0.2]])
        sel = validate_selection(s.select(ctx), ctx)
        assert sel.keep.tolist() == [0, 1, 2, 3, 4][:b]  # x0, x1, then the zero tokens by index (equal relevance)
    # more tokens than dimensions: never NaN, always b distinct tokens
    g = torch.Generator().manual_seed(0)
    many = torch.randn(12, 3, generator=g).tolist()
    for b in (3, 6, 12):
        ctx = _ctx(many, b, [[1.0, 0.0, 0.0]])
        assert validate_selection(s.select(ctx), ctx).keep.numel() == b


# ------------------------------------------------------------------ contract details


def test_metadata_and_schedule() -> None:
    div, cdp = _strategy("divprune"), _strategy("cdpruner")
    info = ModelInfo(num_layers=32, hidden_size=4096)
    assert div.schedule(info) == (StageSpec.vision(),)
    assert cdp.schedule(info) == (StageSpec.vision("text_embeddings"),)
    for s in (div, cdp):
        assert s.position_policy == "contiguous" and s.budget_convention == "tokens" and s.exact_budget
    assert div.params == {} and div.default_keep == 0.098
    assert cdp.params == {"negate": False} and cdp.default_keep == 128 / 576
    assert _strategy("cdpruner", negate="true").params == {"negate": True}  # from the command line


def test_refusals() -> None:
    with pytest.raises(UsageError, match="strategy 'divprune' has no parameter 'ratio' \\(valid: positions\\)"):
        _strategy("divprune", ratio=0.1)
    with pytest.raises(UsageError, match="strategy 'cdpruner' has no parameter 'theta' \\(valid: negate, positions\\)"):
        _strategy("cdpruner", theta=0.5)
    with pytest.raises(UsageError, match="strategy 'cdpruner': parameter negate must be true or false, got 2"):
        _strategy("cdpruner", negate=2)
    with pytest.raises(UsageError, match="strategy 'cdpruner': parameter negate='maybe' is not a bool"):
        _strategy("cdpruner", negate="maybe")
    # a context without the prompt's embeddings is a broken adapter or schedule: the stage is named
    with pytest.raises(PluginError, match="vision: no 'text_embeddings' signal"):
        _strategy("cdpruner").select(_ctx([[1.0, 0.0], [0.0, 1.0]], 1))


def test_modules_are_registered_with_their_own_metadata() -> None:
    from tokenbench.strategies import BUILTINS

    listed = {name: (target, description) for name, target, description in BUILTINS}
    for name, target in (("divprune", "divprune:DivPrune"), ("cdpruner", "cdpruner:CDPruner")):
        cls = get_registry().load("strategies", name)
        assert listed[name] == (target, cls.description) and cls.name == name
        assert Path(__import__(cls.__module__, fromlist=["x"]).__file__ or "").read_text().count("\n") < 400
