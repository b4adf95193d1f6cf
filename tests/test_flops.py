"""fvcore-based MAC counting (tokenbench.flops) vs the analytic counts (tokenbench.flops_analytic)."""

from __future__ import annotations

import doctest
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import tokenbench.flops as flops_mod
import tokenbench.flops_analytic as analytic
from tokenbench.flops import (
    FLOPS_CONVENTION,
    MacCount,
    MacCounter,
    UncountedOperatorError,
    count_macs,
    flops_from_macs,
    is_matmul_operator,
    sdpa_macs,
)
from tokenbench.flops_analytic import (
    decode_macs_per_token,
    decoder_layer_macs,
    fastv_formula,
    layer_averaged_tokens,
    llm_prefill_macs,
    load_model_config,
    qwen2_vl_vision_macs,
    vision_tower_macs,
)
from tokenbench.flops_report import flops_rows, flops_table

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
)


def _close(measured: int, expected: int, rel: float = 0.02) -> bool:
    return math.isclose(measured, expected, rel_tol=rel)


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa")).eval()


def _layer_args(model, n: int):
    hidden = torch.randn(1, n, model.config.hidden_size)
    position_ids = torch.arange(n)[None]
    pe = model.model.rotary_emb(hidden, position_ids)
    return (hidden,), dict(attention_mask=None, position_embeddings=pe)


def _layer_analytic(cfg, n: int, kv_len: int | None = None) -> int:
    return decoder_layer_macs(
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.hidden_size // cfg.num_attention_heads,
        n_tokens=n,
        kv_len=kv_len,
    )


# ---------------------------------------------------------------- (a) decoder layers and whole LLM


@pytest.mark.parametrize("family", ["llama-sdpa", "llama-eager", "qwen2-sdpa"])
def test_decoder_layer_matches_analytic(family: str) -> None:
    torch.manual_seed(0)
    if family.startswith("llama"):
        impl = family.split("-")[1]
        model = LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation=impl)).eval()
    else:  # Qwen2 has q/k/v biases: additions, not multiply-adds
        model = Qwen2ForCausalLM(Qwen2Config(**TINY, attn_implementation="sdpa")).eval()
    for i, n in enumerate((1, 7, 33)):
        args, kwargs = _layer_args(model, n)
        result = count_macs(model.model.layers[i % 2], args, kwargs)
        expected = _layer_analytic(model.config, n)
        assert _close(result.total, expected), (family, n, result)
        assert result.matmul_total == result.total  # RMSNorm is elementwise: fvcore leaves it uncounted
        assert "aten::mul" in result.uncounted
        attention_op = "matmul" if family == "llama-eager" else "scaled_dot_product_attention"
        assert result.by_operator[attention_op] == 2 * n * n * 64  # H·hd = 64, query heads (GQA)


def test_whole_llm_prefill_matches_analytic(llama: LlamaForCausalLM) -> None:
    n = 12
    ids = torch.randint(0, 100, (1, n))
    result = count_macs(llama, (ids,), dict(use_cache=False, logits_to_keep=1))
    assert _close(result.total, llm_prefill_macs(llama.config, [n, n], lm_head_tokens=1))
    assert _close(result.total, llm_prefill_macs(llama.config.to_dict(), [n, n]))
    assert "aten::embedding" in result.uncounted


# ---------------------------------------------------------------- (b) SDPA handle with GQA


class _GQAAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def test_sdpa_handle_uses_query_heads() -> None:
    q, k, v = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 12)
    result = count_macs(_GQAAttention(), (q, k, v))
    expected = 2 * 8 * 5 * 7 * (16 + 12)  # B·H_q·L_q·L_k·(E_qk + E_v); the causal mask is not discounted
    assert result.by_operator == {"scaled_dot_product_attention": expected}
    assert result.total == expected == sdpa_macs(q.shape, k.shape, v.shape)
    assert result.flops == flops_from_macs(expected) == 2 * expected


# ---------------------------------------------------------------- (c) strict check


class _Bmm(torch.nn.Module):
    def forward(self, a, b):
        return torch.bmm(a, b) * 2.0


def test_uncounted_matmul_raises_naming_it() -> None:
    args = (torch.randn(2, 3, 4), torch.randn(2, 4, 5))
    assert count_macs(_Bmm(), args).total == 2 * 3 * 4 * 5
    with pytest.raises(UncountedOperatorError, match="aten::bmm") as info:
        count_macs(_Bmm(), args, extra_handles={"aten::bmm": None})
    assert info.value.operators == {"aten::bmm": 1}
    with pytest.raises(UncountedOperatorError, match="aten::scaled_dot_product_attention"):
        qkv = (torch.randn(1, 2, 3, 4),) * 3
        count_macs(_GQAAttention(), qkv, extra_handles={"aten::scaled_dot_product_attention": None})
    lax = count_macs(_Bmm(), args, extra_handles={"aten::bmm": None}, strict=False)
    assert lax.total == 0 and "aten::bmm" in lax.uncounted and "aten::mul" in lax.uncounted


def test_operator_classification() -> None:
    for op in (
        "aten::linear",
        "bmm",
        "aten::baddbmm_",
        "aten::conv2d",
        "conv",
        "aten::_convolution",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "scaled_dot_product_attention",
    ):
        assert is_matmul_operator(op), op
    for op in ("aten::mul", "aten::silu", "aten::softmax", "layer_norm", "aten::__and__", "aten::embedding"):
        assert not is_matmul_operator(op), op
    assert FLOPS_CONVENTION.startswith("FLOPs = 2")


# ---------------------------------------------------------------- (d) cache by key


def test_mac_counter_traces_once_per_key(llama, monkeypatch) -> None:
    calls = []
    real = flops_mod.count_macs
    monkeypatch.setattr(flops_mod, "count_macs", lambda *a, **k: calls.append(1) or real(*a, **k))
    counter = MacCounter()
    layer = llama.model.layers[0]
    totals = {}
    for n in (4, 9, 4, 4, 9, 4):
        args, kwargs = _layer_args(llama, n)
        totals.setdefault(n, set()).add(counter.count(("layer", n), layer, args, kwargs))
    assert len(calls) == 2 and counter.traces == 2 and len(counter) == 2 and ("layer", 4) in counter
    assert totals == {n: {_layer_analytic(llama.config, n)} for n in (4, 9)}
    assert isinstance(counter.result(("layer", 4), layer, args, kwargs), MacCount) and len(calls) == 2
    counter.clear()
    assert len(counter) == 0


# ---------------------------------------------------------------- (e) FastV formula


def test_fastv_formula_llava_7b() -> None:
    assert math.isclose(fastv_formula(576, 4096, 11008, 32), 2.99e12, rel_tol=0.01)
    assert math.isclose(fastv_formula(192, 4096, 11008, 32), 0.98e12, rel_tol=0.01)
    cfg = load_model_config("llava-1.5-7b")
    # tokenbench's FLOPs: 2 × MACs with the third FFN matrix and the LM head — 2.5–2.6× the FastV units
    ratio = 2 * llm_prefill_macs(cfg, [576] * 32) / fastv_formula(576, 4096, 11008, 32)
    assert 2.5 < ratio < 2.6


def test_analytic_doctests() -> None:
    result = doctest.testmod(analytic, verbose=False)
    assert result.failed == 0 and result.attempted >= 5


# ---------------------------------------------------------------- (f) decode step with a KV cache


def test_decode_step_matches_analytic(llama: LlamaForCausalLM) -> None:
    # fvcore traces a DynamicCache fine once it is passed through the kwargs closure: its tensors are
    # trace constants (their shapes are exact), and only tensor leaves of the output are returned.
    params = inspect.signature(llama.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    n = 10
    with torch.no_grad():
        cache = llama(torch.randint(0, 100, (1, n)), use_cache=True).past_key_values
    assert cache.get_seq_length() == n
    result = count_macs(llama, (torch.randint(0, 100, (1, 1)),), {cache_kw: cache, "use_cache": True, "logits_to_keep": 1})
    assert cache.get_seq_length() == n + 1  # the traced step appended to the cache
    assert _close(result.total, decode_macs_per_token(llama.config, [n, n]))
    # the attention part alone: 1 query × (n + 1) keys per layer, counted with the 4 query heads
    assert result.by_operator["scaled_dot_product_attention"] == 2 * (1 * (n + 1) * 4 * 16 * 2)


# ---------------------------------------------------------------- CLIP vision tower


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_clip_vision_tower_matches_analytic(impl: str) -> None:
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4, image_size=24, attn_implementation=impl
    )
    torch.manual_seed(0)
    model = CLIPVisionModel(cfg).eval()
    result = count_macs(model, (torch.randn(1, 3, 24, 24),))
    expected = vision_tower_macs(cfg)
    assert _close(result.matmul_total, expected), result
    assert result.by_operator["conv"] == 36 * 3 * 4 * 4 * 32
    assert result.total > result.matmul_total  # fvcore also counts the layer norms


@pytest.mark.parametrize("height_width", [(168, 168), (112, 224)])  # 168 px: a partial 4+2 window grid
def test_qwen2_5_vl_vision_tower_matches_analytic(height_width: tuple[int, int]) -> None:
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cfg = Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=24, window_size=112, fullatt_block_indexes=[1])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()
    gh, gw = height_width[0] // 14, height_width[1] // 14
    patches = torch.randn(gh * gw, 3 * 2 * 14 * 14)
    result = count_macs(model, (patches,), dict(grid_thw=torch.tensor([[1, gh, gw]])))
    assert _close(result.matmul_total, analytic.qwen2_5_vl_vision_macs(cfg, height_width)), result


@pytest.mark.parametrize("height_width", [(168, 168), (112, 224)])
def test_qwen2_vl_vision_tower_matches_analytic(height_width: tuple[int, int]) -> None:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    cfg = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=24, mlp_ratio=3, num_heads=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2VisionTransformerPretrainedModel(cfg).eval()
    gh, gw = height_width[0] // 14, height_width[1] // 14
    patches = torch.randn(gh * gw, 3 * 2 * 14 * 14)
    result = count_macs(model, (patches,), dict(grid_thw=torch.tensor([[1, gh, gw]])))
    assert _close(result.matmul_total, analytic.qwen2_vl_vision_macs(cfg, height_width)), result


# ---------------------------------------------------------------- configs and report


def test_bundled_configs() -> None:
    for name, (d, layers, tokens) in {
        "llava-1.5-7b": (4096, 32, 576),
        "llava-1.5-13b": (5120, 40, 576),
        "qwen2.5-vl-3b": (2048, 36, 256),
        "qwen2.5-vl-7b": (3584, 28, 256),
        "qwen2-vl-7b": (3584, 28, 256),
    }.items():
        cfg = load_model_config(name)
        assert cfg["source"] and cfg["num_visual_tokens"] == tokens
        assert (cfg["text_config"]["hidden_size"], cfg["text_config"]["num_hidden_layers"]) == (d, layers)
    with pytest.raises(KeyError, match="Did you mean 'llava-1.5-7b'"):
        load_model_config("llava-1.5-7")
    assert layer_averaged_tokens([576, 576, 144, 144]) == 360.0


def test_flops_report() -> None:
    rows = flops_rows("llava-1.5-7b", [576, 192])
    assert rows[0]["llm_prefill_reduction_pct"] == 0.0
    assert math.isclose(rows[1]["fastv_formula_units"], 0.976e12, rel_tol=0.01)
    assert rows[0]["llm_prefill_flops"] == 2 * llm_prefill_macs(load_model_config("llava-1.5-7b"), [576] * 32)
    assert rows[0]["vision_projector_flops"] == rows[1]["vision_projector_flops"] > 0
    table = flops_table("llava-1.5-7b", [576, 192])
    assert "TFLOPs" in table and "FV-units" in table and "2.986" in table and "0.976" in table
    assert "qwen2.5-vl-7b" in flops_table("qwen2.5-vl-7b", [256, 64], text_tokens=16)
    # Qwen2-VL-7B: the same language model as Qwen2.5-VL-7B, a denser tower (no windows, a 4x MLP)
    qwen2, qwen25 = flops_rows("qwen2-vl-7b", [256]), flops_rows("qwen2.5-vl-7b", [256])
    assert qwen2[0]["llm_prefill_flops"] == qwen25[0]["llm_prefill_flops"]
    assert qwen2[0]["vision_projector_flops"] == 2 * qwen2_vl_vision_macs(load_model_config("qwen2-vl-7b"), 448) > qwen25[0]["vision_projector_flops"]


def test_flops_table_full_budget_row_has_no_negative_zero() -> None:
    """The FastV column's change is signed by its value: none on the full budget, + above it."""
    rows = flops_table("llava-1.5-7b", [576, 192, 600]).splitlines()[2:5]
    assert "2.986 (0.0 %)" in rows[0] and "−0.0" not in rows[0] and "-0.0" not in rows[0]
    assert "(−67.3 %)" in rows[1] and "(+4.3 %)" in rows[2]
