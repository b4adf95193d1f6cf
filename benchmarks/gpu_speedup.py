"""Time-to-first-token speed-up of every strategy on 7B-class VLMs (GPU, bf16, batch 1).

LLaVA-1.5-7B and Qwen2.5-VL-7B are built from their configs
(``tokenbench/model_configs/*.json``) with random weights: latency does not depend on
weight values. The model is constructed directly on the device with weight
initialisation skipped (``transformers.initialization.no_init_weights``; buffers such
as the rotary frequencies are still computed), then its parameters are filled with
N(0, 0.02) on the device (norm weights 1, biases 0): seconds, instead of minutes of
CPU initialisation. Both models see 576 visual tokens per image (LLaVA: 336 px / 14;
Qwen2.5-VL: a 672 × 672 image, 48 × 48 patches merged 2 × 2).

For every registered strategy at 33.3 / 22.2 / 11.1% of the visual tokens
(192 / 128 / 64 of 576) it reports the median time to first token over interleaved
timed calls after warm-up (CUDA events; tokenbench.timing), the speed-up over the
unreduced model, the speed-up the FLOPs imply, decode time per token (forced, equal
token counts) and the allocator's peak memory.

    bash benchmarks/gpu.sh                                  # on a CUDA machine, < 8 min
    python benchmarks/gpu_speedup.py --device cpu --tiny    # a smoke test, on CPU
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_sections import kernel_section, kernels_to_run, throughput_section  # noqa: E402
from prefill_speedup import build, measure, registered_strategies  # noqa: E402

QWEN_IMAGE = 672  # 48 x 48 patches of 14 px, merged 2 x 2: 576 visual tokens, like LLaVA-1.5
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _shrink_text(tc: dict[str, Any], *, heads: int, kv: int) -> None:
    tc.update(hidden_size=32 * heads, intermediate_size=256, num_hidden_layers=4, num_attention_heads=heads, num_key_value_heads=kv)


def llava(device: str, dtype: torch.dtype, tiny: bool) -> tuple[Any, list[Any]]:
    """(LlavaAdapter, samples) for LLaVA-1.5-7B dimensions."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.flops_analytic import load_model_config
    from tokenbench.testing import CHAT_TEMPLATE, word_tokenizer

    raw = load_model_config("llava-1.5-7b")
    tc, vc = dict(raw["text_config"]), {k: v for k, v in raw["vision_config"].items() if k not in ("source", "model_type")}
    tc.pop("model_type", None)
    if tiny:
        _shrink_text(tc, heads=4, kv=4)
        vc.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    tok = word_tokenizer()
    cfg = LlavaConfig(
        text_config=LlamaConfig(**tc, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=CLIPVisionConfig(**vc),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=raw["vision_feature_layer"],
        vision_feature_select_strategy=raw["vision_feature_select_strategy"],
        projector_hidden_act=raw["projector_hidden_act"],
    )
    model = build(LlavaForConditionalGeneration, cfg, device, dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    size, patch = vc["image_size"], vc["patch_size"]
    ip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    name = "llava-1.5-7b (random weights)" + (" tiny" if tiny else "")
    return LlavaAdapter(model, proc, name, device, _dtype_name(dtype)), _samples(size)


def qwen(device: str, dtype: torch.dtype, tiny: bool, workdir: str) -> tuple[Any, list[Any]]:
    """(Qwen2_5_VLAdapter, samples) for Qwen2.5-VL-7B dimensions; raises ImportError if the adapter is unavailable."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from tokenbench.adapters.qwen2_5_vl import Qwen2_5_VLAdapter, load_processor
    from tokenbench.flops_analytic import load_model_config
    from tokenbench.testing import tiny_qwen2_5_vl_checkpoint

    # the processor (Qwen special tokens, 14-px patches, a fixed 672 x 672 resolution), saved by the test helper
    path = Path(workdir) / "qwen-processor"
    tiny_qwen2_5_vl_checkpoint(path, patch_size=14, window_size=112, min_pixels=QWEN_IMAGE**2, max_pixels=QWEN_IMAGE**2)
    proc = load_processor(str(path))
    tok = proc.tokenizer
    raw = load_model_config("qwen2.5-vl-7b")
    tc = {k: v for k, v in raw["text_config"].items() if k != "model_type"}
    vc = {k: v for k, v in raw["vision_config"].items() if k not in ("model_type", "spatial_patch_size", "in_chans")}
    mrope = [16, 24, 24]  # Qwen2.5-VL-7B-Instruct's config.json (rope_scaling.mrope_section), rope_theta 1e6
    if tiny:
        _shrink_text(tc, heads=4, kv=2)
        mrope = [4, 6, 6]
        vc.update(depth=4, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[1, 3])
    vc["out_hidden_size"] = tc["hidden_size"]
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(
        text_config={
            **tc,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": None,
        },
        vision_config=vc,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = build(Qwen2_5_VLForConditionalGeneration, cfg, device, dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    name = "qwen2.5-vl-7b (random weights)" + (" tiny" if tiny else "")
    adapter = Qwen2_5_VLAdapter(model, proc, name, device, _dtype_name(dtype))
    _mark_vision_start(adapter, "encode_images")
    return adapter, _samples(QWEN_IMAGE)


def _mark_vision_start(adapter: Any, method: str) -> None:
    """Make the adapter mark ``vision_start`` before its vision encoder if it does not itself
    (so that time to first token leaves the processor out, as for LLaVA); instance-local, no patching of the class."""
    import inspect

    from tokenbench.timing import mark_phase

    if "mark_phase" in inspect.getsource(type(adapter)):
        return
    inner = getattr(adapter, method)

    def marked(*args: Any, **kwargs: Any) -> Any:
        mark_phase("vision_start")
        return inner(*args, **kwargs)

    setattr(adapter, method, marked)


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def _samples(size: int, n: int = 3) -> list[Any]:
    from prefill_speedup import synthetic_samples

    return synthetic_samples(n, size)


def model_table(rows: Sequence[dict[str, Any]]) -> str:
    from tabulate import tabulate

    out = []
    for r in rows:
        if "error" in r:
            out.append([r["strategy"], r["budget"], r["stage"], "—", "—", "—", "—", "—", "—", "—", "—", "failed: " + r["error"][:70]])
            continue
        lat = r["timing"]
        out.append(
            [
                r["strategy"],
                r["budget"],
                r["stage"],
                f"{r['tokens_in']} / {r['layer_avg']:.1f}",
                f"{lat['ttft_median']:.2f} [{lat['ttft_iqr']:.2f}]",
                f"{r['measured']:.2f}×",
                "—" if r["implied"] != r["implied"] else f"{r['implied']:.2f}×",
                "—" if r["ratio"] != r["ratio"] else f"{r['ratio']:.3f}",
                "—" if lat["decode_per_token_median"] is None else f"{lat['decode_per_token_median']:.2f}",
                f"{lat['selection_median']:.2f} ({100 * r['selection_share']:.1f}%)",
                "—" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}",
                "",
            ]
        )
    headers = [
        "strategy",
        "budget",
        "stage",
        "visual tokens in / layer-avg",
        "TTFT ms, median [IQR]",
        "TTFT speed-up",
        "FLOPs-implied",
        "ratio",
        "decode ms/token",
        "selection ms (% base TTFT)",
        "peak alloc. MB",
        "note",
    ]
    return tabulate(out, headers=headers, tablefmt="github", disable_numparse=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--models", default="llava-1.5-7b,qwen2.5-vl-7b")
    p.add_argument("--keep", default="0.333,0.222,0.111", help="fractions of the visual tokens kept")
    p.add_argument("--strategies", help="comma list (default: every registered strategy)")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=8, help="forced new tokens per timed call (decode time per token)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--time-budget", type=float, default=400.0, help="seconds for all models; each model's timed rounds stop at its share")
    p.add_argument("--tiny", action="store_true", help="shrunken models (576 visual tokens kept): a smoke test")
    p.add_argument("--output", "-o", help="write the markdown table here (default: $OUT/gpu_speedup.md if $OUT is set)")
    p.add_argument("--kernels", default="auto", help="attention kernels to compare (auto: sdpa,flash_attention_2 on CUDA, sdpa,eager on CPU)")
    p.add_argument("--batches", default="1,8,32", help="batch sizes of the throughput table")
    p.add_argument("--throughput-keep", type=float, default=0.222, help="the budget of the kernel and throughput tables")
    args = p.parse_args(argv)
    wall0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_speedup: no CUDA device; use --device cpu --tiny for a smoke test", file=sys.stderr)
        return 2
    from tokenbench.budget import Budget
    from tokenbench.timing import timing_environment

    dtype = DTYPES[args.dtype]
    budgets = Budget.parse_fractions(args.keep)
    strategies, notes = registered_strategies(args.strategies.split(",") if args.strategies else None)
    for n in notes:
        print(n, file=sys.stderr)
    sections: list[str] = []
    env_line = ""
    out = args.output or (os.path.join(os.environ["OUT"], "gpu_speedup.md") if os.environ.get("OUT") else None)

    def render() -> str:
        notes_md = "\n".join(
            [
                "- TTFT: vision encoder + signals + selection + prefill, up to the first token's logits (preprocessing excluded); "
                "speed-up = baseline TTFT / strategy TTFT (medians); FLOPs-implied = baseline prefill FLOPs / strategy prefill FLOPs "
                "(fvcore, 2 × multiply-adds); ratio = speed-up / FLOPs-implied; peak alloc. = torch.cuda.max_memory_allocated "
                "(weights included; on CPU: RSS growth)",
                "- " + env_line,
                *("- " + n for n in notes),
                f"- wall time {time.perf_counter() - wall0:.0f} s",
            ]
        )
        return "\n\n".join(["## TTFT speed-up by strategy (batch 1, random weights, architecture from config)", *sections, notes_md])

    def write() -> None:
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(render() + "\n")

    with tempfile.TemporaryDirectory() as workdir:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        for name in models:
            t0 = time.perf_counter()
            print(f"{name}: building ...", file=sys.stderr)
            try:
                if name == "llava-1.5-7b":
                    adapter, samples = llava(args.device, dtype, args.tiny)
                elif name == "qwen2.5-vl-7b":
                    adapter, samples = qwen(args.device, dtype, args.tiny, workdir)
                else:
                    raise ValueError(f"unknown model {name!r} (llava-1.5-7b, qwen2.5-vl-7b)")
            except ImportError as exc:
                msg = f"### {name}\n\nskipped: the adapter is unavailable ({type(exc).__name__}: {exc})"
                print(msg, file=sys.stderr)
                sections.append(msg)
                write()
                continue
            except Exception as exc:  # noqa: BLE001 - one model failing must not lose the other's table
                msg = f"### {name}\n\nskipped: could not build ({type(exc).__name__}: {exc})"
                print(msg, file=sys.stderr)
                sections.append(msg)
                write()
                continue
            built = time.perf_counter() - t0
            samples = samples[: args.samples]
            share = (args.time_budget - (t0 - wall0)) / len(models[models.index(name) :])  # this model's share of what is left
            deadline = t0 + 0.65 * share  # the rest: the kernel and throughput tables
            rows = measure(
                adapter,
                strategies,
                budgets,
                samples,
                repeats=args.repeats,
                warmup=args.warmup,
                new_tokens=args.new_tokens,
                device=args.device,
                memory=True,
                deadline=deadline,
                log=lambda m, name=name: print(f"{name}: {m}", file=sys.stderr),
            )
            env = timing_environment(adapter, args.device)
            env_line = (
                f"device {env['device_name']}, {env['dtype']}, {env['attention']} attention, {env['threads']} CPU threads, "
                f"timer {env['timer']}; torch {env['torch']}, transformers {env['transformers']}, fvcore {env['fvcore']}"
            )
            base = next(r for r in rows if r["strategy"] == "baseline")
            n_calls = base.get("timing", {}).get("n", 0)
            sections.append(
                f"### {name}{' (tiny)' if args.tiny else ''}: {base.get('num_visual')} visual tokens, {base.get('text_tokens')} text tokens\n\n"
                + model_table(rows)
                + f"\n\n{n_calls} timed calls per row ({len(samples)} samples in turn, at most {args.repeats} passes, rotating order) after {args.warmup} "
                f"warm-up runs; {args.new_tokens} forced new tokens; built in {built:.0f} s, measured in {time.perf_counter() - t0 - built:.0f} s"
            )
            write()  # a table per model as soon as it is done: a time limit loses only the model in progress
            log = lambda m, name=name: print(f"{name}: {m}", file=sys.stderr)  # noqa: E731
            small = Budget("fraction", args.throughput_keep)
            kernels, skipped = kernels_to_run(args.device, args.kernels)
            try:
                kernel_md = kernel_section(
                    adapter, strategies, small, samples, kernels=kernels, skipped=skipped, measure=measure,
                    device=args.device, deadline=t0 + 0.85 * share, log=log,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a failing extra table must not lose the main one
                kernel_md = f"failed: {type(exc).__name__}: {exc}"
            sections.append(f"#### {name}: attention kernels at {small.label}, batch 1\n\n{kernel_md}")
            write()
            try:
                batches = [int(b) for b in args.batches.split(",") if b.strip()]
                tput_md = throughput_section(
                    adapter, strategies, small, samples, batches=batches, new_tokens=args.new_tokens,
                    device=args.device, dtype=args.dtype, deadline=t0 + share, log=log,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                tput_md = f"failed: {type(exc).__name__}: {exc}"
            sections.append(
                f"#### {name}: throughput (whole generate calls, {args.new_tokens} forced new tokens, samples repeated to fill the batch)\n\n{tput_md}"
            )
            write()
            del adapter, rows
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(render())
    write()
    if out:
        print(f"gpu_speedup: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
