"""The ``tokenbench flops`` table: analytic FLOPs at several visual-token budgets.

For each budget (visual tokens kept at every LLM layer) it shows

* the FastV formula ``L × (4nd² + 2n²d + 2ndm)`` — in units of 10¹² "FastV-formula
  units" (one multiply-add counted once, two-matrix FFN, no GQA, no LM head),
  only so numbers quoted from papers can be matched;
* tokenbench's analytic LLM prefill FLOPs (``2 × MACs``; three-matrix SwiGLU,
  grouped-query attention, LM head on the last position), with the config's
  never-pruned separator tokens (``separator_tokens``, e.g. LLaVA-NeXT's
  ``image_newline`` rows) in every layer;
* the vision tower + projector FLOPs on one image at the config's size, every
  tower pass (``vision_passes``: AnyRes crops + base, or tiles + thumbnail)
  counted, which token pruning inside the LLM does not change;
* the reduction relative to the model's full visual-token count.

No torch import: everything comes from :mod:`tokenbench.flops_analytic`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenbench.flops_analytic import (
    fastv_formula,
    internvl_projector_macs,
    llava_projector_macs,
    llm_prefill_macs,
    load_model_config,
    qwen2_5_vl_vision_macs,
    qwen2_vl_vision_macs,
    vision_patches,
    vision_tower_macs,
)

__all__ = ["flops_rows", "flops_table", "signed_pct", "vision_and_projector_flops"]

_TERA = 1e12


def _vision_passes(config: dict[str, Any]) -> int:
    """Vision-tower passes on one image at the config's size (AnyRes crops + base, or tiles + thumbnail); 1 if not given."""
    return int(config.get("vision_passes", 1))


def vision_and_projector_flops(config: dict[str, Any]) -> int:
    """FLOPs (2 × MACs) of the vision encoder and projector/merger on one image at the config's size.

    LLaVA-NeXT and LLaVA-OneVision run their tower and two-layer MLP projector
    once per AnyRes pass (base image + crops; SigLIP has no [CLS]); InternVL runs
    InternViT (with [CLS]) and its pixel-shuffle projector once per tile
    (tiles + thumbnail); ``vision_passes`` in the config gives the passes.
    """
    text_hidden = int(config["text_config"]["hidden_size"])
    vision = config["vision_config"]
    vision_hidden = int(vision["hidden_size"])
    model_type = config.get("model_type")
    passes = _vision_passes(config)
    if model_type == "llava":
        macs = vision_tower_macs(vision) + llava_projector_macs(vision_hidden, text_hidden, int(config["num_visual_tokens"]))
    elif model_type == "llava_next":  # CLIP with [CLS]; the projector on each pass's patches ('default' drops the [CLS])
        per_pass = vision_tower_macs(vision) + llava_projector_macs(vision_hidden, text_hidden, vision_patches(vision))
        macs = passes * per_pass
    elif model_type == "llava_onevision":  # SigLIP, no [CLS]; 'full' keeps every patch
        per_pass = vision_tower_macs(vision, cls_token=False) + llava_projector_macs(vision_hidden, text_hidden, vision_patches(vision))
        macs = passes * per_pass
    elif model_type == "internvl":  # InternViT with [CLS]; the projector on the pixel-shuffled tokens of each tile
        ratio = float(config.get("downsample_ratio", 0.5))
        tokens = round(vision_patches(vision) * ratio * ratio)
        per_pass = vision_tower_macs(vision) + internvl_projector_macs(vision_hidden, text_hidden, tokens, ratio)
        macs = passes * per_pass
    elif model_type == "qwen2_5_vl":
        macs = qwen2_5_vl_vision_macs(vision, int(config.get("image_size", 448)))  # merger included
    elif model_type == "qwen2_vl":
        macs = qwen2_vl_vision_macs(vision, int(config.get("image_size", 448)))  # merger included
    else:
        raise ValueError(f"no vision FLOPs model for model_type {model_type!r}")
    return 2 * macs


def flops_rows(config_name: str, budgets: Sequence[int], text_tokens: int = 0) -> list[dict[str, Any]]:
    """One dict per budget; keys carry their unit (``*_flops`` in FLOPs, ``*_pct`` in percent).

    ``text_tokens`` adds that many text tokens to every layer's sequence in the
    tokenbench prefill count, and so do the config's ``separator_tokens``
    (LLaVA-NeXT's / OneVision's ``image_newline`` rows, which no strategy prunes);
    the FastV-formula column always uses the visual tokens alone, as the
    2.99e12 / 0.98e12 LLaVA figures do.
    """
    return _rows(config_name, load_model_config(config_name), budgets, text_tokens)


def _rows(config_name: str, config: dict[str, Any], budgets: Sequence[int], text_tokens: int) -> list[dict[str, Any]]:
    text = config["text_config"]
    d, m, n_layers = int(text["hidden_size"]), int(text["intermediate_size"]), int(text["num_hidden_layers"])
    full = int(config["num_visual_tokens"])
    separators = int(config.get("separator_tokens", 0))
    vision_flops = vision_and_projector_flops(config)

    def prefill_flops(visual: int) -> int:
        return 2 * llm_prefill_macs(text, [visual + separators + text_tokens] * n_layers, lm_head_tokens=1)

    full_fastv = fastv_formula(full, d, m, n_layers)
    full_llm = prefill_flops(full)
    rows = []
    for budget in budgets:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        fastv = fastv_formula(budget, d, m, n_layers)
        llm = prefill_flops(budget)
        rows.append(
            {
                "config": config_name,
                "visual_tokens": int(budget),
                "full_visual_tokens": full,
                "separator_tokens": separators,
                "text_tokens": int(text_tokens),
                "vision_passes": _vision_passes(config),
                "tokens_kept_pct": 100.0 * budget / full,
                "fastv_formula_units": fastv,
                "fastv_formula_reduction_pct": 100.0 * (1 - fastv / full_fastv),
                "llm_prefill_flops": llm,
                "llm_prefill_reduction_pct": 100.0 * (1 - llm / full_llm),
                "vision_projector_flops": vision_flops,
                "total_flops": llm + vision_flops,
                "total_reduction_pct": 100.0 * (1 - (llm + vision_flops) / (full_llm + vision_flops)),
            }
        )
    return rows


def signed_pct(change: float) -> str:
    """A change in percent with its sign (a true minus), and none on what rounds to zero.

    >>> signed_pct(-66.04), signed_pct(-0.0), signed_pct(0.04), signed_pct(12.5)
    ('−66.0 %', '0.0 %', '0.0 %', '+12.5 %')
    """
    text = f"{abs(change):.1f}"
    if float(text) == 0:
        return f"{text} %"
    return f"{'−' if change < 0 else '+'}{text} %"


def flops_table(config_name: str, budgets: Sequence[int], text_tokens: int = 0) -> str:
    """Plain-text table of :func:`flops_rows` with units and footnotes on the two conventions."""
    config = load_model_config(config_name)
    rows = _rows(config_name, config, budgets, text_tokens)
    header = (
        "visual tokens",
        "kept",
        "FastV formula [10¹² FV-units]¹",
        "LLM prefill [TFLOPs]²",
        "vision+proj [TFLOPs]³",
        "total [TFLOPs]",
        "LLM prefill reduction",
        "total reduction",
    )
    body = [
        (
            f"{r['visual_tokens']} tok",
            f"{r['tokens_kept_pct']:.1f} %",
            f"{r['fastv_formula_units'] / _TERA:.3f} ({signed_pct(-r['fastv_formula_reduction_pct'])})",
            f"{r['llm_prefill_flops'] / _TERA:.3f}",
            f"{r['vision_projector_flops'] / _TERA:.3f}",
            f"{r['total_flops'] / _TERA:.3f}",
            f"{r['llm_prefill_reduction_pct']:.1f} %",
            f"{r['total_reduction_pct']:.1f} %",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    full = int(config["num_visual_tokens"])
    separators = int(config.get("separator_tokens", 0))
    passes = _vision_passes(config)
    text_note = f" + {text_tokens} text tokens" if text_tokens else " (no text tokens)"
    sep_note = f"; its {separators} separator tokens (image_newline) are never pruned and count as text tokens in every layer" if separators else ""
    notes = [
        f"{config_name}: reductions are relative to the full {full} visual tokens{text_note}; budgets are visual tokens kept at every LLM layer{sep_note}.",
        "¹ FastV formula L·(4nd² + 2n²d + 2ndm), n = visual tokens: one multiply-add counted ONCE, 2-matrix FFN, "
        "no GQA, no LM head — not FLOPs; for comparison with papers only.",
        "² tokenbench FLOPs = 2 × multiply-adds: 3-matrix SwiGLU FFN, grouped-query attention, causal attention not discounted, LM head on the last position.",
        f"³ vision encoder + projector/merger on one image ({passes} tower pass{'' if passes == 1 else 'es'}), 2 × multiply-adds; "
        "unchanged by pruning inside the LLM.",
    ]
    return "\n".join([*lines, "", *notes])
