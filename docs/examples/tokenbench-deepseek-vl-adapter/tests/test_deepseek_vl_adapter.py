"""The example adapter passes the equivalence tests every tokenbench adapter must pass.

On a tiny random DeepSeek-VL checkpoint built from a config and saved to a temporary
directory (float32, CPU, no downloads):

- it is registered, listed and picked by the checkpoint's ``model_type``, and runs in
  ``tokenbench compare``;
- keep-everything equals the stock ``model(...)`` logits and ``model.generate(...)``
  token for token (batch 1 and a left-padded batch 2);
- a vision-stage selection equals the stock language model run on the embeddings with
  the dropped image tokens removed and the original position ids passed explicitly;
- the saliency equals the eager attention probabilities of the tower's last layer;
- FLOPs follow the token counts; every registered strategy meets its contract through
  this adapter (a vision-stage one keeps exactly its budget).

The weights are re-initialised at O(1) scale (the stock 0.02 init gives near-tied
logits, which would make token-for-token comparisons vacuous).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenbench_deepseek_vl.adapter import DeepseekVLAdapter

import tokenbench
from tokenbench.testing import check_strategy_contract, word_tokenizer

IMAGE, PATCH, LAYERS = 48, 8, 4
N = (IMAGE // PATCH) ** 2  # 36 visual tokens, a 6 x 6 grid
ATOL = 1e-5
QUESTIONS = ["what colour is the square ?", "how many red circle are there in this picture ? answer with one word"]
TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}User: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% else %} {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} Assistant:{% endif %}"
)


def tiny_deepseek_vl(path: Path, seed: int = 0) -> Path:
    """Save a tiny random DeepSeek-VL (SigLIP 6 x 6 patches, 4 Llama layers) with its processor."""
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLProcessor, LlamaConfig, SiglipVisionConfig
    from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import DeepseekVLImageProcessorPil

    tok = word_tokenizer(" ".join(QUESTIONS).split() + ["User", "Assistant"])
    cfg = DeepseekVLConfig(
        vision_config=SiglipVisionConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        text_config=LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = DeepseekVLForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(
                    1.0 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name and name.endswith("weight") else 0.1 * torch.randn(p.shape, generator=g)
                )
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (1.0 if "embed" in name else math.sqrt(p[0].numel())))
        # greedy decoding never picks a special token or the newline, so runs are never cut short
        model.lm_head.weight[[tok.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>", "<image>", "\n")]] = 0.0
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    processor = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessorPil(size={"height": IMAGE, "width": IMAGE}), tokenizer=tok, chat_template=TEMPLATE, num_image_tokens=N
    )
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_deepseek_vl(tmp_path_factory.mktemp("ckpt") / "tiny-deepseek-vl")


@pytest.fixture(scope="module")
def adapter(ckpt: Path) -> DeepseekVLAdapter:
    return DeepseekVLAdapter.load(str(ckpt))


@pytest.fixture(scope="module")
def stock(ckpt: Path) -> Any:
    from transformers import DeepseekVLForConditionalGeneration

    return DeepseekVLForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def samples() -> list[tokenbench.Sample]:
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(48, 32), (40, 40)]  # (width, height): padded to square by the processor
    return [
        tokenbench.Sample(id=f"s{i}", image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), question=q, answers=("x",))
        for i, ((w, h), q) in enumerate(zip(sizes, QUESTIONS))
    ]


def encode(adapter: DeepseekVLAdapter, samples: list[tokenbench.Sample]) -> Any:
    texts = [adapter.chat_prompt(s.question) for s in samples]
    return adapter.processor(images=[s.load_image() for s in samples], text=texts, return_tensors="pt", padding=True)


class KeepEveryThird(tokenbench.Strategy):
    """Vision stage: keeps every third visual token."""

    name = "keep-every-third"

    def schedule(self, model: tokenbench.ModelInfo) -> tuple[tokenbench.StageSpec, ...]:
        return (tokenbench.StageSpec.vision(),)

    def select(self, ctx: tokenbench.StageContext) -> tokenbench.Selection:
        return tokenbench.Selection(keep=torch.arange(0, ctx.num_tokens, 3))


def strategy(name: str) -> tokenbench.Strategy:
    """A registered strategy, with its default parameters."""
    made = tokenbench.get_registry().load("strategies", name)()
    assert isinstance(made, tokenbench.Strategy)
    return made


FULL = tokenbench.Budget("fraction", 1.0)


# --------------------------------------------------------------------------- registration


def test_registered_listed_and_picked_by_model_type(ckpt: Path, tmp_path: Path) -> None:
    registry = tokenbench.get_registry(refresh=True)
    entry = registry.entry("adapters", "deepseek_vl")
    assert entry.meta["model_types"] == ("deepseek_vl",) and registry.load("adapters", "deepseek_vl") is DeepseekVLAdapter
    cli = [sys.executable, "-c", "from tokenbench.cli import main; raise SystemExit(main())"]
    # run outside any source tree: `python -c` puts the working directory first on sys.path
    listed = subprocess.run([*cli, "list", "adapters"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "warning" not in listed.stderr, listed.stderr
    assert listed.returncode == 0 and "deepseek_vl" in listed.stdout and "tokenbench-deepseek-vl-adapter" in listed.stdout, listed.stderr
    # no --adapter: compare reads model_type from config.json and picks this plugin
    run = subprocess.run(
        [
            *cli,
            "compare",
            "--model",
            str(ckpt),
            "--strategies",
            "random",
            "--keep",
            "0.25",
            "--limit",
            "4",
            "--format",
            "json",
            "--quiet",
            "--store",
            str(tmp_path / "r.db"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert '"family": "deepseek_vl"' in run.stdout and '"visual_tokens_llm_input": 9.0' in run.stdout
    assert DeepseekVLAdapter.visual_token_capacity({"vision_config": {"image_size": IMAGE, "patch_size": PATCH}}) == N


# --------------------------------------------------------------------------- equivalence with the stock model


@pytest.mark.parametrize("batch", [1, 2])
def test_baseline_equals_stock_generate(adapter: DeepseekVLAdapter, stock: Any, samples: list[tokenbench.Sample], batch: int) -> None:
    group = samples[:batch]
    out, _, setups, _ = adapter.run(group, [s.question for s in group], strategy("baseline"), FULL, max_new_tokens=12)
    enc = encode(adapter, group)
    assert batch == 1 or not bool(enc["attention_mask"].all())  # the batch is left-padded
    with torch.no_grad():
        logits = stock(**enc).logits[:, -1].float()
        gen = stock.generate(**enc, max_new_tokens=12, do_sample=False)
    torch.testing.assert_close(out.first_logits, logits, atol=ATOL, rtol=0)
    assert out.tokens == gen[:, enc["input_ids"].shape[1] :].tolist()
    assert all(len(t) == 12 for t in out.tokens)
    assert [(s.num_visual, s.grid) for s in setups] == [(N, (6, 6))] * batch


def test_vision_stage_selection_equals_stock_model_on_the_kept_tokens(adapter: DeepseekVLAdapter, stock: Any, samples: list[tokenbench.Sample]) -> None:
    steps = 6
    out, _, _, _ = adapter.run(samples[:1], QUESTIONS[:1], KeepEveryThird(), FULL, max_new_tokens=steps)
    enc = encode(adapter, samples[:1])
    ids = enc["input_ids"]
    is_img = ids[0] == stock.config.image_token_id
    kept = torch.nonzero(is_img).squeeze(1)[::3]
    rows = torch.cat([torch.nonzero(~is_img).squeeze(1), kept]).sort().values
    assert out.kept[0]["vision"] == list(range(0, N, 3)) and out.tokens_per_layer[0] == [len(kept)] * LAYERS
    with torch.no_grad():
        embeds = stock.get_input_embeddings()(ids)
        embeds[0, is_img] = stock.model.get_image_features(enc["pixel_values"]).pooler_output[0]
        h, pos = embeds[:, rows], rows[None]  # the original position ids of the kept tokens
        lm, cache, tokens = stock.model.language_model, None, []
        for step in range(steps):
            res = lm(inputs_embeds=h, position_ids=pos, cache=cache, use_cache=True)
            cache, logits = res.cache, stock.lm_head(res.last_hidden_state[:, -1]).float()
            if step == 0:
                torch.testing.assert_close(out.first_logits, logits, atol=ATOL, rtol=0)
            tokens.append(int(logits.argmax(-1)))
            h, pos = stock.get_input_embeddings()(torch.tensor([[tokens[-1]]])), torch.tensor([[ids.shape[1] + step]])
    assert out.tokens[0] == tokens


def test_saliency_equals_eager_attention_of_the_last_tower_layer(adapter: DeepseekVLAdapter, ckpt: Path, samples: list[tokenbench.Sample]) -> None:
    from transformers import DeepseekVLForConditionalGeneration

    seen: list[torch.Tensor] = []

    class Record(KeepEveryThird):
        def schedule(self, model: tokenbench.ModelInfo) -> tuple[tokenbench.StageSpec, ...]:
            return (tokenbench.StageSpec.vision("saliency"),)

        def select(self, ctx: tokenbench.StageContext) -> tokenbench.Selection:
            assert ctx.saliency is not None
            seen.append(ctx.saliency)
            return super().select(ctx)

    adapter.run(samples, QUESTIONS, Record(), FULL, max_new_tokens=1)
    eager = DeepseekVLForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        att = eager.model.vision_model(encode(adapter, samples)["pixel_values"], output_attentions=True).attentions[-1]  # [B, H, N, N]
    for b in range(2):
        torch.testing.assert_close(seen[b], att[b].mean(dim=(0, 1)).float(), atol=1e-6, rtol=0)
        assert abs(float(seen[b].sum()) - 1.0) < 1e-5


# --------------------------------------------------------------------------- FLOPs and the strategy contract


def test_flops_follow_the_token_counts(adapter: DeepseekVLAdapter, samples: list[tokenbench.Sample]) -> None:
    full = adapter.generate(samples, QUESTIONS, strategy("baseline"), FULL, max_new_tokens=1)[0]
    pruned = adapter.generate(samples, QUESTIONS, strategy("random"), tokenbench.Budget("count", 9), max_new_tokens=1)[0]
    f_full, f_pruned = adapter.flops(full), adapter.flops_for(pruned.counts)
    assert set(f_full) == {"vision", "projector", "llm_prefill", "decode_per_token", "total_prefill"}
    vh, th = adapter.model.config.vision_config.hidden_size, adapter.text_config.hidden_size
    assert f_full["projector"] == 2 * N * (vh * th + th * th)  # the aligner's two linear layers
    assert f_pruned["vision"] == f_full["vision"] > 0 and f_pruned["llm_prefill"] < f_full["llm_prefill"]
    assert pruned.tokens_per_layer == [9] * LAYERS and len(pruned.kept["vision"]) == 9
    assert (
        adapter.flops_for(
            tokenbench.TokenCounts.from_record({"num_visual": N, "grid": [6, 6], "text_tokens": full.text_tokens, "tokens_per_layer": full.tokens_per_layer})
        )
        == f_full
    )


@pytest.mark.parametrize("name", tokenbench.get_registry(refresh=True).names("strategies"))
def test_every_registered_strategy_meets_its_contract_through_this_adapter(adapter: DeepseekVLAdapter, tmp_path: Path, name: str) -> None:
    check_strategy_contract(strategy(name), workdir=tmp_path, adapter=adapter)
