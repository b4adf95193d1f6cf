"""Pins the three seed methods (fastv, sparsevlm, sppruner) to their specification.

The end-to-end tests run on tiny random LLaVA checkpoints built in a temporary folder
(no downloads); the algorithmic tests build :class:`StageContext` objects by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenbench.budget import Budget
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, validate_selection
from tokenbench.task import Sample

QUESTIONS = ("what colour is the square ?", "how many red circle are there left of the blue square in this picture ?")


def _images(size: int, n: int = 2) -> list:
    from PIL import Image

    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8")) for _ in range(n)]


def _samples(size: int) -> list[Sample]:
    return [Sample(id=f"s{i}", image=im, question=q, answers=("red",)) for i, (im, q) in enumerate(zip(_images(size), QUESTIONS))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-layer tiny LLaVA with a 6×6 grid (36 visual tokens)."""
    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.testing import tiny_llava_checkpoint

    path = tiny_llava_checkpoint(tmp_path_factory.mktemp("tiny36") / "ck", image_size=48, patch_size=8, layers=4)
    return path, LlavaAdapter.load(str(path))


@pytest.fixture(scope="module")
def tiny576(tmp_path_factory):
    """A 32-layer tiny LLaVA with a 24×24 grid (576 visual tokens, as LLaVA-1.5)."""
    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.testing import tiny_llava_checkpoint

    path = tiny_llava_checkpoint(tmp_path_factory.mktemp("tiny576") / "ck", image_size=96, patch_size=4, layers=32)
    return path, LlavaAdapter.load(str(path))


def _generate(adapter, samples, strategy, budget):
    return adapter.generate(samples, [s.question for s in samples], strategy, budget, seed=0, max_new_tokens=2)


# --------------------------------------------------------------------------- fastv


@pytest.fixture(scope="module")
def eager(tiny):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(str(tiny[0]), attn_implementation="eager").eval()


def _eager_attention(hf, adapter, sample, layer):
    """Head-averaged eager attention [S, S] of ``layer`` and the visual-column mask, from stock HF."""
    enc = adapter.processor(images=[sample.load_image()], text=[adapter.chat_prompt(sample.question)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf(**enc, output_attentions=True)
    att = out.attentions[layer][0].float().mean(dim=0)
    return att, enc["input_ids"][0] == hf.config.image_token_id


def _top(scores: torch.Tensor, b: int) -> list[int]:
    return sorted(torch.sort(scores, descending=True, stable=True).indices[:b].tolist())


@pytest.mark.parametrize("k,query", [(2, "last"), (3, "last"), (2, "all")])
def test_fastv_keeps_top_b_of_eager_attention(tiny, eager, k, query):
    from tokenbench.strategies.fastv import FastV

    _, adapter = tiny
    b = 9
    samples = _samples(48)
    results = _generate(adapter, samples, FastV(k=k, query=query), Budget("count", b))
    for sample, res in zip(samples, results):
        att, vis = _eager_attention(eager, adapter, sample, k - 1)
        rows = att[-1] if query == "last" else att.mean(dim=0)
        scores = rows[vis]
        expected = _top(scores, b)
        kept = res.kept[f"llm@{k - 1}"]
        if kept != expected:  # only a floating-point near-tie at the cut may differ
            cut = torch.sort(scores, descending=True).values[b - 1]
            assert all(abs(float(scores[i]) - float(cut)) < 1e-6 for i in set(kept) ^ set(expected))
        assert res.tokens_per_layer == [36] * k + [b] * (4 - k)
        assert res.merged == {f"llm@{k - 1}": 0}


def test_fastv_defaults_and_fallback(tiny):
    from tokenbench.strategies.fastv import FastV

    _, adapter = tiny
    s = FastV()
    assert s.params == {"k": 2, "query": "last"} and s.default_keep == 0.5 and s.budget_convention == "tokens"
    assert s.schedule(ModelInfo(32, 4096)) == (StageSpec.llm(1, "attention", query="last"),)
    samples = _samples(48)
    (r0, r1) = _generate(adapter, samples, s, Budget("default"))
    assert r0.tokens_per_layer == [36, 36, 18, 18]  # R = 50 %
    # K = 0: random at the vision stage, seeded per sample
    rand = _generate(adapter, samples, FastV(k=0), Budget("count", 5))
    again = _generate(adapter, samples, FastV(k=0), Budget("count", 5))
    assert [r.kept for r in rand] == [r.kept for r in again]
    assert rand[0].tokens_per_layer == [5] * 4 and list(rand[0].kept) == ["vision"]
    assert rand[0].kept["vision"] != rand[1].kept["vision"]
    with pytest.raises(ValueError):
        FastV(query="text")
    with pytest.raises(ValueError):
        FastV(k=4).schedule(ModelInfo(4, 64))


def test_fastv_batch_equals_single(tiny):
    """Left padding in a batch of two changes nothing: each sample keeps what it keeps alone."""
    from tokenbench.strategies.fastv import FastV

    _, adapter = tiny
    samples = _samples(48)
    batch = _generate(adapter, samples, FastV(), Budget("count", 7))
    for s, r in zip(samples, batch):
        (alone,) = _generate(adapter, [s], FastV(), Budget("count", 7))
        assert alone.kept == r.kept


# ----------------------------------------------------------------------- sparsevlm


def test_sparsevlm_raters_match_hand_computation():
    from tokenbench.strategies.sparsevlm import SparseVLM

    v = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]]
    t_pre = [[3.0, 3.0]]  # before the image: no causal attention to visual tokens, never a rater
    t_post = [[2.0, 0.0], [0.0, 0.1], [0.1, 2.0], [-1.0, -1.0]]
    # by hand: softmax over text tokens of v·tᵀ, mean over visual tokens, raters above the mean
    rel = [0.0] * len(t_post)
    for row in v:
        logits = [row[0] * t[0] + row[1] * t[1] for t in t_post]
        z = sum(math.exp(x) for x in logits)
        for j, x in enumerate(logits):
            rel[j] += math.exp(x) / z / len(v)
    mean = sum(rel) / len(rel)
    hand = [False] + [r > mean for r in rel]
    assert hand == [False, True, False, True, False]

    s = SparseVLM(recycle=False)
    state: dict = {}
    text = torch.tensor(t_pre + t_post)
    vis = StageContext(
        StageSpec.vision("text_embeddings"), "x", 2, 4, (2, 2), 32, torch.tensor(v), torch.arange(4), torch.Generator(), text_embeddings=text, state=state
    )
    assert s.select(vis).keep.tolist() == [0, 1, 2, 3]
    att = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [0.9, 0.0, 0.0, 0.1], [0.4, 0.1, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]])
    hidden = torch.randn(4, 2)
    ctx = StageContext(
        StageSpec.llm(2, "attention", query="text"), "x", 2, 4, (2, 2), 32, hidden, torch.arange(4), torch.Generator(), attention=att, state=state
    )
    sel = s.select(ctx)
    assert state["sparsevlm"]["raters"].tolist() == hand
    assert torch.allclose(sel.scores, (att[1] + att[3]) / 2)
    k = state["sparsevlm"]["counts"][0]
    assert sel.keep.tolist() == _top((att[1] + att[3]) / 2, k)


def test_sparsevlm_keep_lists_and_scaling():
    from tokenbench.strategies.sparsevlm import keep_counts, layer_average, nearest_list, pruning_layers, release_average

    assert keep_counts(576, 192, 32) == ((2, 6, 15), (300, 200, 110))
    assert keep_counts(576, 128, 32) == ((2, 6, 15), (303, 110, 36))
    assert keep_counts(576, 64, 32) == ((2, 6, 15), (66, 30, 17))
    assert pruning_layers(40) == ((3, 8, 19), (0, 1, 2))  # 2.5 → 3, 7.5 → 8, 18.75 → 19
    assert pruning_layers(4) == ((0, 1, 2), (0, 1, 2))
    assert pruning_layers(3)[0] == (0, 1)  # clamped below L − 1, collided stages merged
    assert nearest_list(144, 36) == 128
    cases = [
        (144, 36, 32),
        (144, 20, 32),
        (576, 100, 32),
        (576, 96, 32),
        (576, 192, 40),
        (2304, 640, 32),
        (36, 9, 4),
        (576, 500, 28),
        (144, 16, 4),
        (144, 32, 4),
        (144, 48, 4),
        (729, 200, 28),
        (1024, 160, 40),
    ]
    for n, b, depth in cases:
        layers, counts = keep_counts(n, b, depth)
        # b under the release's own count: recycled tokens included
        assert abs(release_average(n, depth, layers, counts) - b) <= 0.5, (n, b, depth, counts)
        assert all(1 <= c <= n for c in counts) and list(counts) == sorted(counts, reverse=True)
        # without recycling (recycle=False) nothing recycled is counted: the kept-only average
        layers, counts = keep_counts(n, b, depth, recycle_ratio=None)
        assert abs(layer_average(n, depth, layers, counts) - b) <= 0.5, (n, b, depth, counts)
    assert keep_counts(144, 36, 32) == ((2, 6, 15), (88, 32, 11))  # (303, 110, 36) · 144/576 · s, rounded half-up
    assert keep_counts(144, 36, 32, recycle_ratio=None) == ((2, 6, 15), (93, 34, 11))


def _release_num_token(counts, n=576, layers=(2, 6, 15), depth=32):
    """The release's printed count, by hand: modelling_sparse_llama.py (v1.5) lines 288, 292, 311, 363, 371."""
    per_layer = []
    present = n
    for layer in range(depth):
        if layer in layers:
            k = counts[layers.index(layer)]
            dropped = present - k
            recycled = int(dropped * 0.3) + 1  # line 288: "Top 30%"
            cluster_num = int(recycled / 10) + 1  # line 292
            present = k + cluster_num  # line 311: v_token_num = pred_score_vis.sum() + cluster_num
        per_layer.append(present)  # line 363: num_token.append(v_token_num), after the layer
    return sum(per_layer) / depth  # line 371


def test_sparsevlm_release_count_of_the_released_lists():
    from tokenbench.strategies.sparsevlm import KEEP_LISTS, layer_average, release_average

    # 192: 2·576 + 4·(300 + 9) + 9·(200 + 4) + 17·(110 + 3) = 6145; 128: 4116; 64: 2074 (of 32 layers)
    assert _release_num_token((300, 200, 110)) == 6145 / 32 == 192.03125
    assert _release_num_token((303, 110, 36)) == 4116 / 32 == 128.625
    assert _release_num_token((66, 30, 17)) == 2074 / 32 == 64.8125
    for counts in KEEP_LISTS.values():
        assert release_average(576, 32, (2, 6, 15), counts) == _release_num_token(counts)
    # the kept-only count (the release's comment on score.py line 7): 188.19 / 123.94 / 61.72
    assert [layer_average(576, 32, (2, 6, 15), KEEP_LISTS[b]) for b in (192, 128, 64)] == [188.1875, 123.9375, 61.71875]
    # and as rescaled elsewhere, by hand too
    for n, b, depth in [(576, 100, 32), (576, 96, 32), (2304, 640, 32)]:
        from tokenbench.strategies.sparsevlm import keep_counts

        layers, counts = keep_counts(n, b, depth)
        assert abs(_release_num_token(counts, n, layers, depth) - b) <= 0.5, (n, b, depth, counts)


def test_sparsevlm_192_of_576_end_to_end(tiny576):
    from tokenbench.strategies.sparsevlm import SparseVLM

    _, adapter = tiny576
    samples = _samples(96)
    results = _generate(adapter, samples, SparseVLM(), Budget("count", 192))  # a batch of two, left-padded
    for r in results:
        # kept: the unmerged tokens; kept_merged: recycled tokens of earlier stages kept again
        assert {k: len(v) + r.kept_merged[k] for k, v in r.kept.items()} == {"vision": 576, "llm@2": 300, "llm@6": 200, "llm@15": 110}
        assert r.kept_merged["vision"] == r.kept_merged["llm@2"] == 0
        assert r.kept_merged["llm@6"] <= 9 and r.kept_merged["llm@15"] <= 4 + r.kept_merged["llm@6"]
        # recycled tokens are reported separately: ⌊0.3·dropped⌋ + 1 clustered into ⌊m/10⌋ + 1
        assert r.merged == {"vision": 0, "llm@2": 9, "llm@6": 4, "llm@15": 3}  # 276 → 83 → 9; 109 → 33 → 4; 94 → 29 → 3
        assert r.tokens_per_layer == [576] * 3 + [300 + 9] * 4 + [200 + 4] * 9 + [110 + 3] * 16


def test_sparsevlm_kept_excludes_recycled_tokens_and_recall_does_not_count_them(tiny):
    """A recycled token carries its donor's index; a later stage that keeps it must not report that index as kept."""
    from tokenbench.harness import check_counts
    from tokenbench.strategies.sparsevlm import SparseVLM
    from tokenbench.tasks.shapes.task import ShapesTask

    seen: dict[str, list] = {}

    class Spy(SparseVLM):
        def select(self, ctx):
            sel = super().select(ctx)
            donors = [] if sel.merged_positions is None else ctx.origin[sel.merged_positions].tolist()
            seen.setdefault(ctx.sample_id, []).append((ctx.stage.label, ctx.origin.tolist(), sel.keep.tolist(), donors))
            return sel

    _, adapter = tiny
    samples = _samples(48)
    results = _generate(adapter, samples, Spy(), Budget("count", 12))
    survived_last = 0
    for sample, r in zip(samples, results):
        recycled: set[int] = set()  # origins of the recycled tokens present
        for label, origin, keep, donors in seen[sample.id]:
            kept_origins = [origin[i] for i in keep]
            survivors = [o for o in kept_origins if o in recycled]
            assert r.kept[label] == sorted(o for o in kept_origins if o not in recycled) == sorted(set(r.kept[label]))
            assert r.kept_merged[label] == len(survivors) and r.merged[label] == len(donors)
            recycled = set(survivors) | set(donors)
        assert check_counts(r, list(r.kept)) is None  # kept + kept_merged + merged = the tokens the next layer sees
        last = list(r.kept)[-1]
        if not r.kept_merged[last]:
            continue
        survived_last += 1
        d = survivors[0]  # a recycled token the last stage kept, under its donor's index
        u = r.kept[last][0]
        assert d not in r.kept[last]
        cell = lambda t: (t // 6) * 2 * 12 + (t % 6) * 2  # noqa: E731 - a 12×12 scene cell on token t of the 6×6 grid
        probe = Sample(id="probe", image=sample.image, question=sample.question, answers=("red",), meta={"relevant_cells": [cell(d), cell(u)]})
        # the recycled token under d's index does not count: d itself was dropped (it is a donor)
        assert ShapesTask().diagnostics(probe, r)["relevant_token_recall"] == 0.5
    assert survived_last, "no recycled token survived the last stage: the test model no longer exercises this"


def test_sparsevlm_clustering_is_deterministic_density_peaks():
    from tokenbench.strategies.sparsevlm import density_peak_clusters, recycle

    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g) * 0.05 + torch.tensor([5.0, 0, 0, 0])
    b = torch.randn(5, 4, generator=g) * 0.05 - torch.tensor([5.0, 0, 0, 0])
    x = torch.cat([a, b, a[:2]])  # exact duplicates create density ties
    prio = torch.arange(13, dtype=torch.float32)
    labels = density_peak_clusters(x, 2, prio)
    assert torch.equal(labels, density_peak_clusters(x.clone(), 2, prio.clone()))
    assert labels[:6].unique().numel() == 1 and labels[6:11].unique().numel() == 1 and labels[0] != labels[6]
    assert torch.equal(labels[11:], labels[:2])
    # recycle: the mean of each cluster, placed at its highest-scoring member
    tokens = torch.cat([torch.zeros(3, 4), x])  # three kept tokens, then the 13 dropped ones
    scores = torch.cat([torch.ones(3), torch.linspace(0.1, 0.5, 13)])
    merged, pos = recycle(tokens, scores, torch.arange(3, 16), ratio=1.0)  # all 13 recycled → 13 // 10 + 1 = 2 clusters
    group_a = [0, 1, 2, 3, 4, 5, 11, 12]  # rows of x
    group_b = [6, 7, 8, 9, 10]
    expected = {3 + 12: x[group_a].mean(dim=0), 3 + 10: x[group_b].mean(dim=0)}  # best-scoring member of each
    assert sorted(pos.tolist()) == sorted(expected)
    for row, p in zip(merged, pos.tolist()):
        assert torch.allclose(row, expected[p], atol=1e-6)
    # a 30 % share: ⌊0.3·13⌋ + 1 = 4 recycled (the best-scoring four), one cluster
    merged, pos = recycle(tokens, scores, torch.arange(3, 16), ratio=0.3)
    assert pos.tolist() == [15] and torch.allclose(merged[0], tokens[12:16].mean(dim=0), atol=1e-6)


def test_sparsevlm_adaptive_rank_count():
    from tokenbench.strategies.sparsevlm import SparseVLM

    s = SparseVLM(adaptive=True, recycle=False)
    state = {"sparsevlm": {"raters": torch.tensor([True, True, True])}}
    att = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [0.25, 0.25, 0.5, 0.0, 0.0], [0.75, 0.75, -0.5, 0.0, 0.0]]).abs()
    att[2] = att[0] * 2 - att[1]  # rank 2
    ctx = StageContext(
        StageSpec.llm(2, "attention", query="text"), "x", 4, 5, (1, 5), 32, torch.randn(5, 3), torch.arange(5), torch.Generator(), attention=att, state=state
    )
    assert s.select(ctx).keep.numel() == 2
    s2 = SparseVLM(adaptive=True, recycle=False, adaptive_scale=0.5, adaptive_bias=0.5)  # λ = 0.5: keep 5 − 0.5·(5 − 2)
    assert s2.select(ctx).keep.numel() == 4


# ------------------------------------------------------------------------ sppruner

H = W = 12
BLOB_A = [(r, c) for r in range(2, 5) for c in range(2, 5)]
BLOB_B = [(r, c) for r in range(7, 10) for c in range(7, 10)]


def _blob_ctx(budget: int = 30, seed: int = 0, stage: StageSpec | None = None) -> StageContext:
    """12×12 grid, two separated salient 3×3 blobs; the prompt names blob A only."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    a_vec = torch.zeros(d)
    a_vec[0] = 3.0
    b_vec = torch.zeros(d)
    b_vec[1] = 3.0
    tokens = torch.randn(H * W, d, generator=g)
    sal = torch.ones(H * W)
    for blob, vec in ((BLOB_A, a_vec), (BLOB_B, b_vec)):
        for r, c in blob:
            i = r * W + c
            tokens[i] = vec + 0.1 * torch.randn(d, generator=g)
            sal[i] = 12.0
        r, c = blob[4]
        sal[r * W + c] = 20.0
    text = torch.stack([a_vec + 0.05 * torch.randn(d, generator=g) for _ in range(3)])
    return StageContext(
        stage or StageSpec.vision("saliency", "text_embeddings"),
        "blob",
        budget,
        H * W,
        (H, W),
        32,
        tokens,
        torch.arange(H * W),
        torch.Generator().manual_seed(1),
        saliency=sal / sal.sum(),
        text_embeddings=text,
    )


def _idx(cells):
    return {r * W + c for r, c in cells}


def _ring(cells, dist=1):
    out = set()
    for i in range(H * W):
        r, c = divmod(i, W)
        if min(max(abs(r - rr), abs(c - cc)) for rr, cc in cells) == dist:
            out.add(i)
    return out


def _sp(**kw):
    from tokenbench.strategies.sppruner import SPPruner

    return SPPruner(**kw)


def test_sppruner_keeps_every_subject_and_its_context():
    ctx = _blob_ctx()
    sel = validate_selection(_sp().select(ctx), ctx)
    keep = set(sel.keep.tolist())
    assert sel.keep.numel() == 30 and sel.count == 30  # exact budget
    assert _idx(BLOB_A) <= keep and _idx(BLOB_B) <= keep  # both subjects, not only the named one
    for blob in (BLOB_A, BLOB_B):
        assert keep & _ring(blob), "the first ring around each subject is represented"
    # the focus set is capped at 60 % of the budget: with a budget of 20 only 12 subject cells fit,
    # shared round-robin between the two subjects
    small = _sp(context=False, merge=False).select(_blob_ctx(budget=20))
    subject_cells = set(small.keep.tolist()) & (_idx(BLOB_A) | _idx(BLOB_B))
    assert small.keep.numel() == 20
    assert len(set(small.keep.tolist()) & _idx(BLOB_A)) >= 5 and len(set(small.keep.tolist()) & _idx(BLOB_B)) >= 5
    assert len(subject_cells) >= 12


def test_sppruner_merge_is_score_weighted_mean():
    ctx = _blob_ctx()
    s = _sp()
    sel = s.select(ctx)
    focus = s.focus_score(ctx, torch.nn.functional.normalize(ctx.tokens, dim=-1))
    assert torch.allclose(sel.scores, focus)
    keep = sel.keep.tolist()
    # independent assignment: every token to its nearest kept token on the grid (ties: lower index)
    num = {k: torch.zeros(ctx.tokens.shape[1]) for k in keep}
    den = {k: 0.0 for k in keep}
    for i in range(H * W):
        r, c = divmod(i, W)
        best = min(keep, key=lambda k: ((r - k // W) ** 2 + (c - k % W) ** 2, k))
        num[best] += focus[i] * ctx.tokens[i]
        den[best] += float(focus[i])
    expected = torch.stack([num[k] / den[k] for k in keep])
    assert torch.allclose(sel.values, expected, atol=1e-5)
    # the focus-weighted sum over all tokens is preserved by the merge
    weights = torch.tensor([den[k] for k in keep])
    assert torch.allclose((weights[:, None] * sel.values).sum(0), (focus[:, None] * ctx.tokens).sum(0), atol=1e-4)


@pytest.mark.parametrize("budget", [1, 7, 30, 143, 144])
def test_sppruner_budget_is_exact(budget):
    for kw in ({}, {"focus": False}, {"context": False}, {"multi_subject": False}, {"merge": False}):
        ctx = _blob_ctx(budget=budget)
        sel = validate_selection(_sp(**kw).select(ctx), ctx)
        assert sel.count == budget, (kw, budget)


@pytest.mark.parametrize("switch", ["focus", "multi_subject", "context", "merge", "progressive"])
def test_sppruner_every_switch_changes_the_output(switch):
    default = _sp()
    flipped = _sp(**{switch: not default.params[switch]})
    ctx = _blob_ctx()
    a, b = default.select(ctx), flipped.select(_blob_ctx())

    def same(x: Selection, y: Selection) -> bool:
        if not torch.equal(x.keep, y.keep) or (x.values is None) != (y.values is None):
            return False
        return x.values is None or torch.allclose(x.values, y.values)

    assert not same(a, b), switch
    if switch == "multi_subject":
        assert not _idx(BLOB_B) <= set(b.keep.tolist())
    if switch == "progressive":
        info = ModelInfo(32, 64)
        assert len(flipped.schedule(info)) == 2 and flipped.schedule(info)[1] == StageSpec.llm(7, "attention", query="text")
        assert flipped.budget_convention == "layer_average" and default.budget_convention == "tokens"


def test_sppruner_progressive_stage_and_average():
    from tokenbench.strategies.sppruner import progressive_split

    s = _sp(progressive=True)
    p, b1, b2 = progressive_split(30, 144, 32, 0.75)
    assert (p * b1 + (32 - p) * b2) / 32 == 30 and b2 < b1
    vis = s.select(_blob_ctx())
    assert vis.count == b1
    stage = StageSpec.llm(p - 1, "attention", query="text")
    ctx = StageContext.for_testing(num_visual=144, budget=30, stage=stage, num_layers=32)
    ctx.tokens, ctx.origin = ctx.tokens[:b1], ctx.origin[:b1]
    ctx.attention = ctx.attention[:, :b1]
    sel = s.select(ctx)
    assert sel.keep.tolist() == _top(ctx.attention.mean(dim=0), b2)


# ----------------------------------------------------------------- every built-in


@pytest.mark.parametrize("name", ["baseline", "random", "pooling", "attention-only", "fastv", "sparsevlm", "sppruner"])
def test_builtin_runs_end_to_end_batch_of_two(tiny, name):
    from tokenbench.registry import get_registry

    _, adapter = tiny
    cls = get_registry().load("strategies", name)
    s = cls()
    samples = _samples(48)
    results = _generate(adapter, samples, s, Budget("count", 9))
    assert len(results) == 2
    for r in results:
        assert len(r.tokens_per_layer) == 4 and r.tokens_per_layer[0] <= 36
        if s.keeps_all:
            assert r.tokens_per_layer == [36] * 4
        elif s.budget_convention == "tokens" and s.exact_budget:
            assert r.tokens_per_layer[-1] == 9
        for kept in r.kept.values():
            assert kept == sorted(set(kept)) and all(0 <= k < 36 for k in kept)
