"""Adapter-contract tests for LLaVA (docs/architecture.md, "The contracts").

Every test drives the real ``LlavaAdapter.generate`` on a tiny random checkpoint
saved to a temporary directory (float32, CPU, no downloads) and compares what it did
with an independent reference built from the unmodified Hugging Face model:

- keep-everything equals ``model(...)`` / ``model.generate(...)`` (batch 1 and a
  left-padded batch 2);
- a vision-stage selection equals the stock model run on ``inputs_embeds`` with the
  dropped image tokens removed and the original position ids passed explicitly;
- an LLM-stage selection equals a hand-written loop over the stock decoder layers that
  slices the sequence after layer k, for prefill and for greedy decoding;
- attention signals (SDPA stays on) equal eager attention probabilities;
- CLIP saliency equals the [CLS] row of an eager vision-tower run;
- per-layer token counts are measured, and a batch with sample-dependent counts
  equals each sample run alone;
- decoding positions continue from the unpruned length.

The tiny checkpoint is re-initialised with O(1) weights (the stock 0.02 init gives
near-uniform attention and near-tied logits, which would make these comparisons
vacuous), and the special tokens and the newline are made unreachable for greedy
decoding so that every run produces exactly ``max_new_tokens`` tokens.

The adapter's inputs to :func:`prefill_and_decode` and its output (``first_logits``)
are captured by wrapping the function for the duration of one ``generate`` call, so
the layout under test is the one ``LlavaAdapter.generate`` itself builds; its LM head
is wrapped too, so the logits of every decoding step (not only the greedy tokens) are
compared with the reference at atol 1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import tokenbench.decoder_adapter as decoder_adapter_mod
from tokenbench import decoding
from tokenbench.adapters.llava import LlavaAdapter
from tokenbench.budget import FULL, Budget
from tokenbench.strategies.baseline import Baseline
from tokenbench.strategies.pooling import Pooling
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy
from tokenbench.task import Sample
from tokenbench.testing import tiny_llava_checkpoint

LAYERS = 4
IMAGE, PATCH = 48, 8
SIDE = IMAGE // PATCH
N = SIDE * SIDE  # visual tokens per image (6 x 6)
K = 1  # the LLM stage acts after this decoder layer
ATOL = 1e-5

QUESTIONS = {
    "a": "what colour is the square ?",
    "b": "how many red circle are there in this picture ? answer with one word",
    "c": "how many circle are there ?",  # as long as "a": no padding in a batch with it
}


# --------------------------------------------------------------------------- fixtures


def _sharpen(model: Any, tokenizer: Any, seed: int = 1) -> None:
    """O(1) random weights, so attention is peaked and logits well separated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif "class_embedding" in name:
                    p.copy_(torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "position_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        # greedy decoding never picks a special token or the newline (a logit of 0
        # against ~58 others of unit spread), so runs are never cut short
        unreachable = [tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>", "<image>", "\n")]
        model.lm_head.weight[unreachable] = 0.0


def _build(path: Any, feature_layer: int) -> str:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    tiny_llava_checkpoint(path, layers=LAYERS, image_size=IMAGE, patch_size=PATCH, feature_layer=feature_layer)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    _sharpen(model, AutoProcessor.from_pretrained(path).tokenizer)
    model.save_pretrained(path)
    return str(path)


@dataclass
class Bundle:
    adapter: LlavaAdapter
    hf: Any  # the unmodified model, SDPA
    eager: Any  # the same weights, eager attention


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is fastest on a shared machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Bundle]:
    from transformers import LlavaForConditionalGeneration

    cache: dict[int, Bundle] = {}

    def get(feature_layer: int = -2) -> Bundle:
        if feature_layer not in cache:
            path = _build(tmp_path_factory.mktemp(f"llava{feature_layer}"), feature_layer)
            adapter = LlavaAdapter.load(path)
            hf = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
            eager = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
            cache[feature_layer] = Bundle(adapter, hf, eager)
        return cache[feature_layer]

    return get


@pytest.fixture(scope="module")
def m(models: Callable[[int], Bundle]) -> Bundle:
    return models(-2)


def _sample(sid: str) -> Sample:
    from PIL import Image

    rng = np.random.RandomState(ord(sid))
    img = Image.fromarray((rng.rand(IMAGE, IMAGE, 3) * 255).astype("uint8"))
    return Sample(id=sid, image=img, question=QUESTIONS[sid], answers=("red",))


SAMPLES = {sid: _sample(sid) for sid in QUESTIONS}


# --------------------------------------------------------------------------- strategies


class Scripted(Strategy):
    """Keeps, at each stage, the visual tokens whose ORIGINAL index passes a rule.

    ``rules[label](sample_id, origin) -> bool mask``; a stage without a rule keeps all.
    Records every context it receives (cloned) in ``seen[(sample_id, label)]``.
    """

    name = "test-scripted"
    description = "test strategy"

    def __init__(self, stages: tuple[StageSpec, ...], rules: dict[str, Callable[[str, torch.Tensor], torch.Tensor]] | None = None) -> None:
        super().__init__()
        self._stages = stages
        self.rules = rules or {}
        self.seen: dict[tuple[str, str], StageContext] = {}

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return self._stages

    def select(self, ctx: StageContext) -> Selection:
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        self.seen[(ctx.sample_id, ctx.stage.label)] = StageContext(
            stage=ctx.stage,
            sample_id=ctx.sample_id,
            budget=ctx.budget,
            num_visual=ctx.num_visual,
            grid=ctx.grid,
            num_layers=ctx.num_layers,
            tokens=clone(ctx.tokens),
            origin=clone(ctx.origin),
            generator=ctx.generator,
            saliency=clone(ctx.saliency),
            text_embeddings=clone(ctx.text_embeddings),
            attention=clone(ctx.attention),
        )
        rule = self.rules.get(ctx.stage.label)
        if rule is None:
            return Selection(keep=torch.arange(ctx.num_tokens))
        return Selection(keep=torch.nonzero(rule(ctx.sample_id, ctx.origin)).squeeze(1))


def every(n: int, r: int = 0) -> Callable[[str, torch.Tensor], torch.Tensor]:
    return lambda sid, origin: origin % n == r


# --------------------------------------------------------------------------- running the adapter


@dataclass
class Run:
    results: list[Any]
    out: decoding.DecodeOutput
    layout: decoding.TokenLayout  # as the adapter built it, before any stage
    step_logits: list[torch.Tensor]  # [B, V] per step: the prefill, then each decode step

    def logits(self, b: int) -> list[torch.Tensor]:
        return [s[b : b + 1] for s in self.step_logits]


def run(m: Bundle, sids: list[str], strategy: Strategy, *, budget: Budget = FULL, max_new_tokens: int = 10) -> Run:
    """``LlavaAdapter.generate`` with its call to ``prefill_and_decode`` captured.

    The LM head is wrapped too, so that the logits of every step are recorded.
    """
    captured: dict[str, Any] = {}
    real = decoding.prefill_and_decode
    head = m.adapter.parts.lm_head
    steps: list[torch.Tensor] = []

    def recording_head(x: torch.Tensor) -> torch.Tensor:
        y = head(x)
        steps.append(y[:, -1].detach().float().clone())
        return y

    def spy(parts: Any, layout: decoding.TokenLayout, *args: Any, **kwargs: Any) -> decoding.DecodeOutput:
        captured["layout"] = decoding.TokenLayout(layout.hidden.clone(), layout.pos.clone(), layout.valid.clone(), layout.origin.clone())
        captured["out"] = real(parts, layout, *args, **kwargs)
        return captured["out"]

    mp = pytest.MonkeyPatch()
    mp.setattr(decoder_adapter_mod, "prefill_and_decode", spy)
    mp.setattr(m.adapter.parts, "lm_head", recording_head)
    try:
        samples = [SAMPLES[s] for s in sids]
        results = m.adapter.generate(samples, [s.question for s in samples], strategy, budget, max_new_tokens=max_new_tokens)
    finally:
        mp.undo()
    out = captured["out"]
    assert len(steps) == max(len(t) for t in out.tokens)
    close(steps[0], out.first_logits, atol=0.0)
    return Run(results, out, captured["layout"], steps)


# --------------------------------------------------------------------------- references


@dataclass
class Ref:
    """The unmodified model's inputs for one or more samples (left-padded)."""

    enc: Any
    embeds: torch.Tensor  # [B, S, d] inputs_embeds exactly as the HF model builds them
    pos: torch.Tensor  # [B, S] position ids as HF generate derives them
    is_img: torch.Tensor  # [B, S]
    valid: torch.Tensor  # [B, S]


def reference_inputs(m: Bundle, sids: list[str]) -> Ref:
    proc = m.adapter.processor
    samples = [SAMPLES[s] for s in sids]
    texts = [m.adapter.chat_prompt(s.question) for s in samples]
    enc = proc(images=[s.load_image() for s in samples], text=texts, return_tensors="pt", padding=True)
    valid = enc["attention_mask"].bool()
    pos = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 0)
    grabbed: dict[str, torch.Tensor] = {}

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        grabbed["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = m.hf.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            m.hf(**enc, position_ids=pos)
    finally:
        handle.remove()
    is_img = enc["input_ids"] == m.hf.config.image_token_id
    assert int(is_img.sum()) == N * len(sids)
    return Ref(enc, grabbed["embeds"], pos, is_img, valid)


def hf_logits(m: Bundle, embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Last-position logits of the stock model on ``inputs_embeds`` with explicit position ids."""
    with torch.no_grad():
        return m.hf(inputs_embeds=embeds, position_ids=pos).logits[:, -1].float()


def hf_greedy(m: Bundle, embeds: torch.Tensor, pos: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """Logits of every step and greedy tokens; each step re-runs the whole sequence (no cache).

    The token generated at step ``i`` sits at position ``pos[-1] + 1 + i``.
    """
    embed = m.hf.get_input_embeddings()
    logits = [hf_logits(m, embeds, pos)]
    tokens: list[int] = []
    last = int(pos[0, -1])
    for i in range(steps):
        t = int(logits[-1][0].argmax())
        tokens.append(t)
        if i == steps - 1:
            break
        with torch.no_grad():
            embeds = torch.cat([embeds, embed(torch.tensor([[t]]))], dim=1)
        pos = torch.cat([pos, torch.tensor([[last + 1 + i]])], dim=1)
        logits.append(hf_logits(m, embeds, pos))
    return logits, tokens


Cuts = dict[int, torch.Tensor]


def manual_layers(m: Bundle, embeds: torch.Tensor, pos: torch.Tensor, cuts: Cuts) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The stock decoder layers run by hand with an explicit causal mask (batch 1).

    After each layer ``k`` in ``cuts`` only the sequence entries ``cuts[k]`` (bool over
    the sequence as it is there) go on, with their own position ids. Returns the
    last-position logits and each cut layer's output (before slicing).
    """
    lm = m.hf.model.language_model
    h, p = embeds, pos
    at_cut = {}
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            s = h.shape[1]
            mask = torch.ones(s, s, dtype=torch.bool).tril()[None, None]
            out = layer(h, attention_mask=mask, position_ids=p, position_embeddings=lm.rotary_emb(h, p))
            h = out[0] if isinstance(out, tuple) else out
            if i in cuts:
                at_cut[i] = h
                h, p = h[:, cuts[i]], p[:, cuts[i]]
        logits = m.hf.lm_head(lm.norm(h))[:, -1].float()
    return logits, at_cut


def manual_greedy(m: Bundle, embeds: torch.Tensor, pos: torch.Tensor, cuts: Cuts, steps: int) -> tuple[list[torch.Tensor], dict[int, torch.Tensor], list[int]]:
    """Greedy decoding with :func:`manual_layers`, recomputing the whole pruned sequence.

    Layers up to a cut see every token that reached them and the generated ones; later
    layers see the survivors and the generated ones. Generated token i sits at
    ``pos[-1] + 1 + i``.
    """
    embed = m.hf.get_input_embeddings()
    first, at_cut = manual_layers(m, embeds, pos, cuts)
    logits, tokens = [first], []
    last = int(pos[0, -1])
    for i in range(steps):
        t = int(logits[-1][0].argmax())
        tokens.append(t)
        if i == steps - 1:
            break
        with torch.no_grad():
            embeds = torch.cat([embeds, embed(torch.tensor([[t]]))], dim=1)
        pos = torch.cat([pos, torch.tensor([[last + 1 + i]])], dim=1)
        cuts = {k: torch.cat([c, torch.tensor([True])]) for k, c in cuts.items()}
        logits.append(manual_layers(m, embeds, pos, cuts)[0])
    return logits, at_cut, tokens


def visual_index(ref: Ref, b: int) -> torch.Tensor:
    """Original visual index of every entry of sample ``b`` (-1 for text and padding)."""
    idx = torch.full(ref.is_img[b].shape, -1, dtype=torch.long)
    idx[ref.is_img[b]] = torch.arange(N)
    return idx


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


def same_run(r: Run, b: int, logits: list[torch.Tensor], tokens: list[int]) -> None:
    """Sample ``b`` of the adapter run produced these tokens, with these logits at every step."""
    assert len(r.step_logits) == len(logits)
    for step, (got, want) in enumerate(zip(r.logits(b), logits)):
        try:
            close(got, want)
        except AssertionError as exc:
            raise AssertionError(f"step {step}: {exc}") from None
    assert r.out.tokens[b] == tokens


# --------------------------------------------------------------------------- 1. baseline == HF


@pytest.mark.parametrize("sids", [["a"], ["a", "b"]], ids=["batch1", "batch2-left-padded"])
def test_baseline_equals_unmodified_model(m: Bundle, sids: list[str]) -> None:
    r = run(m, sids, Baseline(), max_new_tokens=20)
    ref = reference_inputs(m, sids)
    if len(sids) == 2:
        assert not bool(ref.valid.all()), "the batch must be left-padded"
        assert bool(ref.valid[:, -1].all())
    # the adapter's own layout is the model's: same embeddings, positions, padding
    assert torch.equal(r.layout.valid, ref.valid)
    assert torch.equal(r.layout.pos[..., 0][ref.valid], ref.pos[ref.valid])
    close(r.layout.hidden[ref.valid], ref.embeds[ref.valid])

    with torch.no_grad():
        logits = m.hf(**ref.enc, position_ids=ref.pos).logits[:, -1].float()
        gen = m.hf.generate(**ref.enc, max_new_tokens=20, do_sample=False, output_logits=True, return_dict_in_generate=True)
    close(r.out.first_logits, logits)
    close(r.out.first_logits, gen.logits[0].float())
    new = gen.sequences[:, ref.enc["input_ids"].shape[1] :]
    assert new.shape[1] == 20
    tok = m.adapter.processor.tokenizer
    for b in range(len(sids)):
        same_run(r, b, [x[b : b + 1] for x in gen.logits], new[b].tolist())
        assert r.results[b].prediction == tok.decode(new[b], skip_special_tokens=True).strip()
        top2 = logits[b].topk(2).values
        assert r.results[b].answer_margin == pytest.approx(float(top2[0] - top2[1]), abs=1e-4)
    if len(sids) == 2:  # the two samples really are different inputs
        assert (r.out.first_logits[0] - r.out.first_logits[1]).abs().max() > 1e-2


def test_keep_all_at_every_stage_equals_unmodified_model(m: Bundle) -> None:
    """Stages that keep everything still go through selection, re-padding and the cache."""
    strategy = Scripted((StageSpec.vision("saliency", "text_embeddings"), StageSpec.llm(K, "attention", query="all")))
    r = run(m, ["a", "b"], strategy, max_new_tokens=20)
    ref = reference_inputs(m, ["a", "b"])
    with torch.no_grad():
        gen = m.hf.generate(**ref.enc, max_new_tokens=20, do_sample=False, output_logits=True, return_dict_in_generate=True)
    new = gen.sequences[:, ref.enc["input_ids"].shape[1] :]
    for b in range(2):
        same_run(r, b, [x[b : b + 1] for x in gen.logits], new[b].tolist())
        assert r.results[b].tokens_per_layer == [N] * LAYERS
        assert r.results[b].kept == {"vision": list(range(N)), f"llm@{K}": list(range(N))}


# --------------------------------------------------------------------------- 2. vision stage


def test_vision_selection_equals_pruned_inputs_embeds_with_original_positions(m: Bundle) -> None:
    strategy = Scripted((StageSpec.vision("text_embeddings"),), {"vision": every(3)})
    r = run(m, ["a"], strategy, max_new_tokens=12)
    ref = reference_inputs(m, ["a"])
    vis = visual_index(ref, 0)
    keep = (vis < 0) | (vis % 3 == 0)
    embeds, pos = ref.embeds[:, keep], ref.pos[:, keep]
    assert int((vis[keep] >= 0).sum()) == N // 3
    assert int(pos[0, -1]) == ref.embeds.shape[1] - 1  # the last prompt token keeps its position

    logits, tokens = hf_greedy(m, embeds, pos, 12)
    same_run(r, 0, logits, tokens)
    first = logits[0]
    assert r.results[0].kept == {"vision": list(range(0, N, 3))}
    # the context held the projected visual tokens and their original indices
    ctx = strategy.seen[("a", "vision")]
    close(ctx.tokens, ref.embeds[0, ref.is_img[0]])
    assert ctx.origin.tolist() == list(range(N))
    assert ctx.text_embeddings is not None
    close(ctx.text_embeddings, ref.embeds[0, ~ref.is_img[0]])

    # not vacuous: pruning changes the logits, and so does renumbering the positions
    assert (hf_logits(m, ref.embeds, ref.pos) - first).abs().max() > 1e-2
    compact = torch.arange(embeds.shape[1])[None]
    assert (hf_logits(m, embeds, compact) - first).abs().max() > 1e-2


@pytest.mark.parametrize("sids", [["a"], ["a", "b"]])
def test_vision_selection_with_contiguous_positions_equals_the_stock_model_fed_the_kept_tokens(m: Bundle, sids: list[str]) -> None:
    """``position_policy = "contiguous"``: the reduced prompt is numbered 0, 1, 2, ... as if it were the input
    (what LLaVA's own code does when a method drops image features before the LLM), and decoding follows it."""
    strategy = Scripted((StageSpec.vision("text_embeddings"),), {"vision": every(3)})
    strategy.position_policy = "contiguous"
    r = run(m, sids, strategy, max_new_tokens=12)
    for b, sid in enumerate(sids):
        ref = reference_inputs(m, [sid])
        vis = visual_index(ref, 0)
        keep = (vis < 0) | (vis % 3 == 0)
        embeds = ref.embeds[:, keep]
        logits, tokens = hf_greedy(m, embeds, torch.arange(embeds.shape[1])[None], 12)
        same_run(r, b, logits, tokens)
        # not vacuous: the original ids give other logits
        assert (hf_logits(m, embeds, ref.pos[:, keep]) - logits[0]).abs().max() > 1e-2


class KeepRowMergeWindows(Strategy):
    """Vision stage: keeps the first grid row (with its states negated, through
    ``values``), drops the second, and averages each 2x2 window of rows 2-5 into one
    token placed at the window's bottom-right token.

    The merged tokens are returned in reverse order, so the adapter must pair
    ``merged[j]`` with ``merged_positions[j]`` and sort them into the sequence itself.
    """

    name = "test-keep-row-merge-windows"
    description = "test strategy"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.vision(),)

    def select(self, ctx: StageContext) -> Selection:
        grid = ctx.tokens.reshape(SIDE, SIDE, -1)[2:]
        pooled = grid.reshape(2, 2, 3, 2, -1).mean(dim=(1, 3)).reshape(6, -1)
        donors = torch.tensor([(2 + 2 * i + 1) * SIDE + 2 * j + 1 for i in range(2) for j in range(3)])
        keep = torch.arange(SIDE)
        return Selection(keep=keep, values=-ctx.tokens[keep], merged=pooled.flip(0), merged_positions=donors.flip(0))


def test_merged_tokens_take_their_donor_positions(m: Bundle) -> None:
    r = run(m, ["a"], KeepRowMergeWindows(), max_new_tokens=8)
    ref = reference_inputs(m, ["a"])
    feats = ref.embeds[0, ref.is_img[0]].reshape(SIDE, SIDE, -1)
    pooled = feats[2:].reshape(2, 2, 3, 2, -1).mean(dim=(1, 3)).reshape(6, -1)
    donors = [(2 + 2 * i + 1) * SIDE + 2 * j + 1 for i in range(2) for j in range(3)]
    vis = visual_index(ref, 0)
    keep = (vis < 0) | (vis < SIDE) | torch.isin(vis, torch.tensor(donors))
    embeds, pos = ref.embeds[:, keep].clone(), ref.pos[:, keep]
    embeds[0, vis[keep] >= SIDE] = pooled  # donors are in ascending order in the sequence
    first_row = (vis[keep] >= 0) & (vis[keep] < SIDE)
    embeds[0, first_row] = -embeds[0, first_row]
    logits, tokens = hf_greedy(m, embeds, pos, 8)
    same_run(r, 0, logits, tokens)
    assert r.results[0].merged == {"vision": 6}
    assert r.results[0].kept == {"vision": list(range(SIDE))}
    assert r.results[0].tokens_per_layer == [SIDE + 6] * LAYERS


def test_pooling_counts_its_merged_tokens(m: Bundle) -> None:
    r = run(m, ["a"], Pooling(), budget=Budget("count", 9), max_new_tokens=1)
    assert r.results[0].merged == {"vision": 9}
    assert r.results[0].kept == {"vision": []}
    assert r.results[0].tokens_per_layer == [9] * LAYERS


# --------------------------------------------------------------------------- 3. LLM stage


@pytest.mark.parametrize("k", [0, K, LAYERS - 2])
@pytest.mark.parametrize("with_vision", [False, True], ids=["llm-only", "vision-then-llm"])
def test_llm_selection_equals_manual_layer_loop(m: Bundle, with_vision: bool, k: int) -> None:
    stages = ((StageSpec.vision(),) if with_vision else ()) + (StageSpec.llm(k, "hidden_states"),)
    rules = {f"llm@{k}": lambda sid, o: (o % 3 == 1) | (o < 2)}
    if with_vision:
        rules["vision"] = every(2)
    strategy = Scripted(stages, rules)
    steps = 10
    r = run(m, ["a"], strategy, max_new_tokens=steps)

    ref = reference_inputs(m, ["a"])
    vis = visual_index(ref, 0)
    enter = (vis < 0) | (vis % 2 == 0) if with_vision else torch.ones_like(vis, dtype=torch.bool)
    embeds, pos, vis_in = ref.embeds[:, enter], ref.pos[:, enter], vis[enter]
    survivors = (vis_in < 0) | (vis_in % 3 == 1) | ((vis_in >= 0) & (vis_in < 2))
    logits, cut_out, tokens = manual_greedy(m, embeds, pos, {k: survivors}, steps)
    at_cut = cut_out[k]
    same_run(r, 0, logits, tokens)
    first = logits[0]
    ctx = strategy.seen[("a", f"llm@{k}")]
    assert ctx.origin.tolist() == vis_in[vis_in >= 0].tolist()
    close(ctx.tokens, at_cut[0, vis_in >= 0])  # the layer's output hidden states
    expected_kept = [int(o) for o in vis_in[survivors] if o >= 0]
    assert r.results[0].kept[f"llm@{k}"] == expected_kept
    n_in, n_out = int((vis_in >= 0).sum()), len(expected_kept)
    assert r.results[0].tokens_per_layer == [n_in] * (k + 1) + [n_out] * (LAYERS - k - 1)

    # not vacuous: the cut changes the output
    no_cut, _ = manual_layers(m, embeds, pos, {})
    assert (no_cut - first).abs().max() > 1e-2


def test_two_llm_stages_equal_manual_layer_loop(m: Bundle) -> None:
    """Prune after layer 0 and again after layer 2, with the attention signal at both."""
    strategy = Scripted(
        (StageSpec.llm(0, "attention", query="last"), StageSpec.llm(2, "attention", query="text")),
        {"llm@0": every(2), "llm@2": every(4)},
    )
    steps = 10
    r = run(m, ["a"], strategy, max_new_tokens=steps)
    ref = reference_inputs(m, ["a"])
    vis = visual_index(ref, 0)
    cut0 = (vis < 0) | (vis % 2 == 0)
    vis1 = vis[cut0]
    cut2 = (vis1 < 0) | (vis1 % 4 == 0)
    logits, at_cut, tokens = manual_greedy(m, ref.embeds, ref.pos, {0: cut0, 2: cut2}, steps)
    same_run(r, 0, logits, tokens)
    close(strategy.seen[("a", "llm@2")].tokens, at_cut[2][0, vis1 >= 0])
    assert strategy.seen[("a", "llm@2")].origin.tolist() == list(range(0, N, 2))
    assert r.results[0].tokens_per_layer == [N, N // 2, N // 2, N // 4]
    assert r.results[0].kept == {"llm@0": list(range(0, N, 2)), "llm@2": list(range(0, N, 4))}
    # attention signals: eager layer 0 on the full sequence; eager layer 2 on what is
    # left after layer 0 (layer 1 run by hand on the survivors)
    with torch.no_grad():
        att = m.eager(inputs_embeds=ref.embeds, position_ids=ref.pos, output_attentions=True).attentions[0].mean(dim=1)[0]
        close(strategy.seen[("a", "llm@0")].attention, att[-1:][:, ref.is_img[0]])
        lm = m.eager.model.language_model
        h, p = at_cut[0][:, cut0], ref.pos[:, cut0]
        s = h.shape[1]
        causal = torch.full((s, s), float("-inf")).triu(1)[None, None]
        h = lm.layers[1](h, attention_mask=causal, position_ids=p, position_embeddings=lm.rotary_emb(h, p))
        h = h[0] if isinstance(h, tuple) else h
        layer2 = lm.layers[2]
        _, weights = layer2.self_attn(layer2.input_layernorm(h), position_embeddings=lm.rotary_emb(h, p), attention_mask=causal)
    att2 = weights.mean(dim=1)[0]
    close(strategy.seen[("a", "llm@2")].attention, att2[vis1 < 0][:, vis1 >= 0])


# --------------------------------------------------------------------------- 4. attention signals


@pytest.mark.parametrize("keys", ["cached", "recomputed"])
@pytest.mark.parametrize("query", ["last", "text", "all"])
def test_attention_signal_equals_eager_probabilities(m: Bundle, query: str, keys: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys come from the layer's KV cache entry, or (no such entry) are recomputed: both equal eager."""
    if keys == "recomputed":
        import tokenbench.layer_signals

        monkeypatch.setattr(tokenbench.layer_signals, "cached_keys", lambda *args: None)
    strategy = Scripted((StageSpec.llm(K, "attention", query=query),))
    run(m, ["a", "b"], strategy, max_new_tokens=1)
    ref = reference_inputs(m, ["a", "b"])
    assert m.eager.config.text_config._attn_implementation == "eager"
    assert m.adapter.model.config.text_config._attn_implementation == "sdpa"
    with torch.no_grad():
        att = m.eager(**ref.enc, position_ids=ref.pos, output_attentions=True).attentions[K].mean(dim=1)  # [B,S,S]
    for b, sid in enumerate(["a", "b"]):
        rows = {
            "last": ref.valid[b] & (torch.arange(ref.valid.shape[1]) == ref.valid.shape[1] - 1),
            "text": ref.valid[b] & ~ref.is_img[b],
            "all": ref.valid[b],
        }[query]
        expected = att[b][rows][:, ref.is_img[b]]
        got = strategy.seen[(sid, f"llm@{K}")].attention
        assert got is not None and got.shape == expected.shape
        close(got, expected)
        assert expected.std() > 1e-3  # not uniform


def test_attention_signal_after_vision_pruning_equals_eager(m: Bundle) -> None:
    """Gapped original positions: eager attention on the pruned inputs_embeds."""
    strategy = Scripted((StageSpec.vision(), StageSpec.llm(K + 1, "attention", query="text")), {"vision": every(2, 1)})
    run(m, ["a", "b"], strategy, max_new_tokens=1)
    for sid in ("a", "b"):
        ref = reference_inputs(m, [sid])
        vis = visual_index(ref, 0)
        keep = (vis < 0) | (vis % 2 == 1)
        embeds, pos, is_img = ref.embeds[:, keep], ref.pos[:, keep], ref.is_img[0, keep]
        with torch.no_grad():
            att = m.eager(inputs_embeds=embeds, position_ids=pos, output_attentions=True).attentions[K + 1].mean(dim=1)[0]
        close(strategy.seen[(sid, f"llm@{K + 1}")].attention, att[~is_img][:, is_img])


# --------------------------------------------------------------------------- 5. CLIP saliency


@pytest.mark.parametrize("feature_layer", [-2, -1])
def test_cls_saliency_equals_eager_vision_tower(models: Callable[[int], Bundle], feature_layer: int) -> None:
    mb = models(feature_layer)
    strategy = Scripted((StageSpec.vision("saliency"), StageSpec.llm(K, "saliency")), {"vision": every(3, 2)})
    run(mb, ["a", "b"], strategy, max_new_tokens=1)
    ref = reference_inputs(mb, ["a", "b"])
    tower = mb.eager.model.vision_tower
    with torch.no_grad():
        out = tower(ref.enc["pixel_values"], output_attentions=True, output_hidden_states=True)
    assert out.attentions is not None and len(out.attentions) == 2
    for b, sid in enumerate(["a", "b"]):
        expected = out.attentions[feature_layer][b].mean(dim=0)[0, 1:]
        got = strategy.seen[(sid, "vision")].saliency
        assert got is not None and got.shape == (N,)
        close(got, expected)
        # at a later stage, each surviving token carries its own saliency
        later = strategy.seen[(sid, f"llm@{K}")]
        assert later.origin.tolist() == list(range(2, N, 3))
        assert later.saliency is not None
        close(later.saliency, expected[later.origin])
        # the layer matters: the other layer's [CLS] row is different
        other = out.attentions[-1 if feature_layer == -2 else -2][b].mean(dim=0)[0, 1:]
        assert (other - expected).abs().max() > 1e-3
        # and the context's tokens are the features of that same layer, projected
        close(strategy.seen[(sid, "vision")].tokens, ref.embeds[b, ref.is_img[b]])


# --------------------------------------------------------------------------- 6. token counts, mixed batches


def test_tokens_per_layer_are_measured(m: Bundle) -> None:
    r = run(m, ["a"], Baseline(), max_new_tokens=1)
    assert r.results[0].tokens_per_layer == [N] * LAYERS
    assert r.results[0].kept == {} and r.results[0].merged == {}

    r = run(m, ["a"], Scripted((StageSpec.llm(K),), {f"llm@{K}": every(4)}), max_new_tokens=1)
    assert r.results[0].tokens_per_layer == [N] * (K + 1) + [N // 4] * (LAYERS - K - 1)

    r = run(m, ["a"], Scripted((StageSpec.vision(), StageSpec.llm(K)), {"vision": every(2), f"llm@{K}": every(6)}), max_new_tokens=1)
    assert r.results[0].tokens_per_layer == [N // 2] * (K + 1) + [N // 6] * (LAYERS - K - 1)
    assert r.results[0].layer_average == pytest.approx(sum(r.results[0].tokens_per_layer) / LAYERS)


class KeepAndMerge(Strategy):
    """At the LLM stage: keeps every 4th token and merges the rest into two tokens."""

    name = "test-keep-and-merge"
    description = "test strategy"

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        return (StageSpec.llm(K),)

    def select(self, ctx: StageContext) -> Selection:
        keep = torch.nonzero(ctx.origin % 4 == 0).squeeze(1)
        rest = torch.nonzero(ctx.origin % 4 != 0).squeeze(1)
        halves = rest.chunk(2)
        merged = torch.stack([ctx.tokens[h].mean(dim=0) for h in halves])
        return Selection(keep=keep, merged=merged, merged_positions=torch.stack([h[0] for h in halves]))


def test_merged_tokens_are_counted(m: Bundle) -> None:
    r = run(m, ["a", "b"], KeepAndMerge(), max_new_tokens=1)
    for res in r.results:
        assert res.tokens_per_layer == [N] * (K + 1) + [N // 4 + 2] * (LAYERS - K - 1)
        assert res.merged == {f"llm@{K}": 2}
        assert res.kept == {f"llm@{K}": list(range(0, N, 4))}


def _uneven() -> Scripted:
    """Sample-dependent counts at both stages: a keeps 18 then 6, b keeps 12 then 2."""
    rules = {
        "vision": lambda sid, o: o % 2 == 0 if sid == "a" else o % 3 == 0,
        f"llm@{K}": lambda sid, o: o % 6 == 0 if sid == "a" else (o == 3) | (o == 33),
    }
    return Scripted((StageSpec.vision(), StageSpec.llm(K, "attention", query="text")), rules)


@pytest.mark.parametrize("pair", [["a", "b"], ["a", "c"]], ids=["left-padded", "same-length"])
def test_batch_with_sample_dependent_counts_equals_single_runs(m: Bundle, pair: list[str]) -> None:
    """Different counts per sample force re-padding at each stage (from a padded batch,
    or from one without padding); each sample must still be its own single run."""
    steps = 10
    ref = reference_inputs(m, pair)
    assert bool(ref.valid.all()) == (pair[1] == "c")
    batched = _uneven()
    both = run(m, pair, batched, max_new_tokens=steps)
    assert both.results[0].tokens_per_layer == [18] * (K + 1) + [6] * (LAYERS - K - 1)
    assert both.results[1].tokens_per_layer == [12] * (K + 1) + [2] * (LAYERS - K - 1)
    for b, sid in enumerate(pair):
        single = _uneven()
        alone = run(m, [sid], single, max_new_tokens=steps)
        same_run(both, b, alone.step_logits, alone.out.tokens[0])
        for label in ("vision", f"llm@{K}"):
            got, want = batched.seen[(sid, label)], single.seen[(sid, label)]
            close(got.tokens, want.tokens)
            assert torch.equal(got.origin, want.origin)
        att_b, att_1 = batched.seen[(sid, f"llm@{K}")].attention, single.seen[(sid, f"llm@{K}")].attention
        assert att_b is not None and att_1 is not None
        close(att_b, att_1)
        assert both.results[b].prediction == alone.results[0].prediction
        assert both.results[b].kept == alone.results[0].kept
        assert both.results[b].tokens_per_layer == alone.results[0].tokens_per_layer
    # and each single run is the reference model's
    ref = reference_inputs(m, pair[1:])
    vis = visual_index(ref, 0)
    enter = (vis < 0) | (vis % 3 == 0)
    vis_in = vis[enter]
    survivors = (vis_in < 0) | (vis_in == 3) | (vis_in == 33)
    logits, _, tokens = manual_greedy(m, ref.embeds[:, enter], ref.pos[:, enter], {K: survivors}, steps)
    same_run(both, 1, logits, tokens)


# --------------------------------------------------------------------------- 7. decode positions


def test_decode_positions_continue_from_unpruned_length(m: Bundle) -> None:
    steps = 6
    seen: list[torch.Tensor] = []
    rotary = m.adapter.parts.rotary

    def recording(h: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(pos.detach().clone())
        return rotary(h, pos)

    mp = pytest.MonkeyPatch()
    mp.setattr(m.adapter.parts, "rotary", recording)
    try:
        r = run(m, ["a", "b"], _uneven(), max_new_tokens=steps)
    finally:
        mp.undo()
    ref = reference_inputs(m, ["a", "b"])
    last = ref.valid.sum(dim=1) - 1  # original last prompt position per sample
    decode = [p for p in seen if p.shape[1] == 1]
    assert len(decode) == steps - 1
    for step, p in enumerate(decode):
        assert p[:, 0, 0].tolist() == (last + 1 + step).tolist()
    assert all(len(t) == steps for t in r.out.tokens)
