"""Does a strategy's FLOPs saving turn into time to first token? (CPU, float32, batch 1)

Builds a LLaVA-architecture model with random weights from a config (latency does not
depend on weight values): a Llama language model with Qwen2-0.5B-like dimensions
(hidden 896, 24 layers, 14 heads, 2 KV heads, FFN 4864, vocabulary 151,936, tied
embeddings: 0.49 B parameters) behind a CLIP-style vision tower (336-pixel image, 14-pixel patches: 576
visual tokens; 1024 wide, 4 layers) and a two-layer projector. For every registered
strategy at 22.2% of the visual tokens (128 of 576) it reports, against the unreduced
model:

- the measured speed-up of time to first token (vision encoder + signals + selection +
  prefill, up to the first token's logits), medians over interleaved timed calls after
  warm-up (tokenbench.timing: the same timed loop as ``tokenbench compare
  --timing-samples``);
- the speed-up the FLOPs imply: baseline prefill FLOPs / strategy prefill FLOPs,
  counted by fvcore on the shapes of the pass (``adapter.flops()``);
- their ratio (1.0: every FLOP saved is time saved), and the selection's own time as a
  share of the baseline time to first token;
- the physical limit: the speed-up of the stock model sliced by hand to the same
  visual-token count entering every decoder layer, with no tokenbench code on the path
  (benchmarks/physical_limit.py), timed in the same interleaved loop; and the
  strategy's measured speed-up as a share of it.

FLOPs do not turn into time one for one even with no overhead (smaller matrix products
run at a lower rate; docs/measurement.md), so the target is set against the physical
limit: measured / limit >= 0.97 for every strategy, and selection <= 2% of the baseline
TTFT. The FLOPs ratio is printed beside it.

    python benchmarks/prefill_speedup.py                 # the full run, < 10 min on 2 cores
    python benchmarks/prefill_speedup.py --tiny          # a smoke test, seconds

``oracle`` is skipped: it needs samples of the ``shapes`` task (it reads which grid
cells each answer depends on), not the synthetic images used here.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from physical_limit import LimitAdapter, PhysicalLimit  # noqa: E402

#: a strategy's measured speed-up / the physical limit's (the same per-layer token counts, no tokenbench code)
LIMIT_TARGET = 0.97

SKIP = {"oracle": "needs shapes-task sample ids (it keeps the cells each answer depends on); not applicable to synthetic images"}

# a LLaVA-1.5-style prompt: system line + question + answer-format instruction (~60 text tokens)
PROMPTS = (
    "what colour is the shape on the left of the picture ? answer the question with one word . "
    "is there a red circle above the blue square in this image ? answer yes or no . which shape is the largest",
    "how many green triangle are there in the image ? answer with one word . is the purple diamond below "
    "or above the yellow circle ? what colour is the object on the right of the square in this picture",
    "which object is left of the orange circle ? answer the question with one word . are there two or three "
    "blue square in this picture ? what is the shape above the green triangle in the image",
)
SYSTEM = "a question about a picture . answer the question with the shape or the colour or yes or no or a number . "


@dataclass
class Dims:
    """Model dimensions: the language model and the vision tower."""

    hidden: int = 896
    layers: int = 24
    heads: int = 14
    kv_heads: int = 2
    ffn: int = 4864
    vocab: int = 151936
    image: int = 336
    patch: int = 14
    v_hidden: int = 1024
    v_ffn: int = 4096
    v_layers: int = 4
    v_heads: int = 16


TINY = Dims(hidden=64, layers=4, heads=4, kv_heads=2, ffn=128, vocab=512, image=48, patch=8, v_hidden=32, v_ffn=64, v_layers=2, v_heads=4)


def lm_params(d: Dims) -> int:
    hd = d.hidden // d.heads
    attn = d.hidden * d.hidden * 2 + d.hidden * d.kv_heads * hd * 2
    return d.layers * (attn + 3 * d.hidden * d.ffn) + d.vocab * d.hidden  # embeddings tied with the LM head, as Qwen2-0.5B


def random_init_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Fill every parameter in place: matrices and embeddings N(0, std), 1-D weights 1, biases 0."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1 and "embedding" not in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)


def build(cls: Any, cfg: Any, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """``cls`` from ``cfg`` on ``device`` in ``dtype``, SDPA attention, random weights, eval mode.

    Built directly on the device with transformers' weight initialisation skipped
    (``no_init_weights``: buffers such as rotary frequencies are still computed), then
    filled by :func:`random_init_` there: seconds instead of minutes of CPU init for 7B.
    """
    from transformers.initialization import no_init_weights

    with torch.device(device), no_init_weights():
        model = cls._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    random_init_(model, seed=seed)
    return model.eval()


def build_llava(d: Dims, *, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[Any, Any]:
    """A random-weight ``LlavaForConditionalGeneration`` (SDPA) and its processor (word tokenizer)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from tokenbench.testing import CHAT_TEMPLATE, word_tokenizer

    tok = word_tokenizer()
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=d.image,
            patch_size=d.patch,
            hidden_size=d.v_hidden,
            intermediate_size=d.v_ffn,
            num_hidden_layers=d.v_layers,
            num_attention_heads=d.v_heads,
        ),
        text_config=LlamaConfig(
            hidden_size=d.hidden,
            intermediate_size=d.ffn,
            num_hidden_layers=d.layers,
            num_attention_heads=d.heads,
            num_key_value_heads=d.kv_heads,
            vocab_size=max(d.vocab, len(tok)),
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = build(LlavaForConditionalGeneration, cfg, device, dtype, seed=seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    ip = CLIPImageProcessorPil(size={"shortest_edge": d.image}, crop_size={"height": d.image, "width": d.image})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=d.patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model, proc


def synthetic_samples(n: int, size: int) -> list[Any]:
    """``n`` drawn images with long-ish questions (no files)."""
    from PIL import Image, ImageDraw

    from tokenbench.task import Sample

    out = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (120 + 10 * i, 128, 140))
        draw = ImageDraw.Draw(im)
        for j in range(4):
            x, y = (37 * (i + 1) * (j + 2)) % (size // 2), (53 * (j + 1) + 11 * i) % (size // 2)
            draw.ellipse((x, y, x + size // 3, y + size // 4), fill=((60 * j) % 255, (90 * i) % 255, (40 * j + 70) % 255))
        out.append(Sample(id=f"bench{i}", image=im, question=SYSTEM + PROMPTS[i % len(PROMPTS)], answers=("red",)))
    return out


def registered_strategies(names: Sequence[str] | None = None) -> tuple[list[Any], list[str]]:
    """Instantiated strategies from the registry (baseline first) and messages about skipped ones."""
    from tokenbench.registry import get_registry

    reg = get_registry()
    notes = [f"plugin problem: {p}" for p in reg.problems]
    wanted = list(names) if names else reg.names("strategies")
    out = []
    for name in ["baseline"] + [n for n in wanted if n != "baseline"]:
        if name in SKIP:
            notes.append(f"skipped {name}: {SKIP[name]}")
            continue
        try:
            out.append(reg.load("strategies", name)())
        except Exception as exc:  # noqa: BLE001 - a strategy still being written must not stop the others
            notes.append(f"skipped {name}: cannot load ({type(exc).__name__}: {exc})")
    return out, notes


def stage_of(strategy: Any, info: Any) -> str:
    kinds = {s.kind for s in strategy.schedule(info)}
    return "llm" if "llm" in kinds else "vision" if kinds else "none"


def measure(
    adapter: Any,
    strategies: Sequence[Any],
    budgets: Sequence[Any],
    samples: Sequence[Any],
    *,
    repeats: int,
    warmup: int,
    new_tokens: int,
    device: str,
    memory: bool = False,
    deadline: float | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """FLOPs (one untimed pass each) and timings (the interleaved timed loop) for every strategy x budget."""
    from tokenbench.budget import FULL
    from tokenbench.timing import TimingConfig, TimingSettings, summarise, timed_loop

    configs, rows = [], []
    for strategy in strategies:
        for budget in [FULL] if strategy.keeps_all else budgets:
            row: dict[str, Any] = {"strategy": strategy.name, "budget": budget.label, "stage": stage_of(strategy, adapter.info)}
            try:
                res = adapter.generate(samples[:1], [samples[0].question], strategy, budget, max_new_tokens=1)[0]
                try:
                    row["flops"] = adapter.flops(res)
                except Exception as exc:  # noqa: BLE001 - no FLOPs: still timed
                    row["flops"] = None
                    log(f"{strategy.name} @ {budget.label}: FLOPs not counted ({type(exc).__name__}: {exc})")
                row["tokens_in"] = res.tokens_per_layer[0]
                row["tokens_per_layer"] = tuple(res.tokens_per_layer)
                row["layer_avg"] = res.layer_average
                row["text_tokens"] = res.text_tokens
                row["num_visual"] = res.num_visual
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"
                log(f"{strategy.name} @ {budget.label}: failed: {row['error']}")
                rows.append(row)
                continue
            rows.append(row)
            configs.append((row, TimingConfig(strategy, budget)))
    # the physical limit of every schedule: the stock model sliced by hand, in the same interleaved loop
    # (first-token timing only: the bare rows stop at the first token's logits)
    n_vis = next((r["num_visual"] for r in rows if "num_visual" in r), 0)
    unpruned = (n_vis,) * adapter.info.num_layers
    schedules = sorted({r["tokens_per_layer"] for r in rows if "tokens_per_layer" in r} | {unpruned}, key=lambda t: (-sum(t), t))
    limits = {t: TimingConfig(PhysicalLimit(t), FULL, label=f"limit {t[0]}/{sum(t) / len(t):.1f}") for t in schedules} if new_tokens == 1 else {}
    prompts = [s.question for s in samples]
    settings = TimingSettings(len(samples), new_tokens=new_tokens, warmup=warmup, repeats=repeats, memory=memory)
    t0 = time.perf_counter()
    timed_loop(
        LimitAdapter(adapter) if limits else adapter,
        samples,
        prompts,
        [c for _, c in configs] + list(limits.values()),
        settings=settings,
        device=device,
        deadline=deadline,
        progress=lambda i, n: log(f"  timed round {i}/{n} ({time.perf_counter() - t0:.0f} s)") if i in (1, n) or i % 5 == 0 else None,
    )
    limit_ttft = {t: summarise(c)["latency_ms"]["ttft_median"] for t, c in limits.items() if c.error is None and c.calls}
    for t, c in limits.items():
        if c.error:
            log(f"physical limit {t[0]} tokens: failed: {c.error}")
    for row, config in configs:
        if config.error:
            row["error"] = config.error
            continue
        summary = summarise(config)
        row["timing"] = summary["latency_ms"]
        row["peak_memory_mb"] = summary["peak_memory_mb"]
        full, sliced = limit_ttft.get(unpruned), limit_ttft.get(row["tokens_per_layer"])
        row["limit"] = full / sliced if full and sliced else None
        row["limit_ttft"] = sliced
    base = next(r for r in rows if r["strategy"] == "baseline")
    for row in rows:
        if "error" in row or "error" in base:
            continue
        lat, blat = row["timing"], base["timing"]
        row["measured"] = blat["ttft_median"] / lat["ttft_median"]
        row["implied"] = base["flops"]["total_prefill"] / row["flops"]["total_prefill"] if row["flops"] and base["flops"] else float("nan")
        row["ratio"] = row["measured"] / row["implied"]
        row["vs_limit"] = row["measured"] / row["limit"] if row.get("limit") else None
        row["selection_share"] = lat["selection_median"] / blat["ttft_median"]
        row["target"] = LIMIT_TARGET if row["stage"] != "none" else None
        row["pass"] = None if row["target"] is None or row["vs_limit"] is None else bool(row["vs_limit"] >= LIMIT_TARGET and row["selection_share"] <= 0.02)
    return rows


def _code_keys(*functions: Any) -> set[tuple[str, int, str]]:
    import inspect

    keys = set()
    for fn in functions:
        code = inspect.unwrap(fn).__code__
        keys.add((code.co_filename, code.co_firstlineno, code.co_name))
    return keys


def profile_breakdown(adapter: Any, strategy: Any, budget: Any, sample: Any, calls: int = 3) -> dict[str, float]:
    """Where one call's time goes (ms, median of ``calls`` cProfile'd calls, 1 new token): vision tower, saliency,
    decoder layers, attention signals, ``select``, the adapter's re-layout, and the rest."""
    import cProfile
    import pstats

    from tokenbench import decoding, layer_signals

    layer_fn = type(adapter.parts.layers[0]).forward
    groups = {
        "vision tower": _code_keys(type(adapter.model.model).get_image_features),
        "saliency": _code_keys(type(adapter)._cls_saliency) if hasattr(type(adapter), "_cls_saliency") else set(),
        "decoder layers": _code_keys(layer_fn),
        "attention signals": _code_keys(layer_signals.LayerSignals.attention),
        "select": _code_keys(type(strategy).select),
        "re-layout": _code_keys(decoding._rebuild_row, decoding._repad, decoding._layer_inputs),
        "generate": _code_keys(type(adapter).generate),
    }
    runs: list[dict[str, float]] = []
    for _ in range(calls):
        prof = cProfile.Profile()
        with torch.no_grad():
            prof.runcall(adapter.generate, [sample], [sample.question], strategy, budget, max_new_tokens=1)
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        out = {}
        for name, keys in groups.items():
            out[name] = 1e3 * sum(v[3] for k, v in stats.items() if k in keys)
        out["other"] = out["generate"] - sum(v for k, v in out.items() if k != "generate")  # the groups are disjoint parts of generate
        runs.append(out)
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}


def breakdown_table(
    adapter: Any, rows: Sequence[dict[str, Any]], strategies: Sequence[Any], budgets: Sequence[Any], samples: Sequence[Any], names: Sequence[str]
) -> str:
    """The profile of the baseline and of ``names``, with the decoder layers' measured vs FLOPs-implied speed-up."""
    from tabulate import tabulate

    from tokenbench.budget import FULL

    by_name = {s.name: s for s in strategies}
    base_row = next(r for r in rows if r["strategy"] == "baseline")
    base = profile_breakdown(adapter, by_name["baseline"], FULL, samples[0])
    out = []
    for name in ["baseline", *names]:
        row = next((r for r in rows if r["strategy"] == name and "error" not in r), None)
        if row is None:
            continue
        prof = base if name == "baseline" else profile_breakdown(adapter, by_name[name], budgets[0], samples[0])
        llm_implied = base_row["flops"]["llm_prefill"] / row["flops"]["llm_prefill"]
        out.append(
            [
                name,
                *(f"{prof[k]:.1f}" for k in ("generate", "vision tower", "saliency", "decoder layers", "attention signals", "select", "re-layout", "other")),
                f"{base['decoder layers'] / prof['decoder layers']:.2f}× / {llm_implied:.2f}×",
            ]
        )
    headers = [
        "strategy",
        "call ms",
        "vision tower",
        "saliency",
        "decoder layers",
        "attention signals",
        "select",
        "re-layout",
        "other (preproc., embed, head)",
        "decoder layers: measured / FLOPs-implied speed-up",
    ]
    return tabulate(out, headers=headers, tablefmt="github", disable_numparse=True)


def _ms(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def limit_line(rows: Sequence[dict[str, Any]]) -> str:
    """The physical-limit rows' own TTFTs, beside the tokenbench rows of the same schedule."""
    by_schedule: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r and r.get("limit_ttft"):
            by_schedule.setdefault(r["tokens_per_layer"], []).append(r)
    parts = []
    for schedule, group in sorted(by_schedule.items(), key=lambda kv: -sum(kv[0])):
        bare = group[0]["limit_ttft"]
        ours = ", ".join(f"{r['strategy']} {r['timing']['ttft_median'] / bare:.3f}" for r in group)
        parts.append(f"{schedule[0]} in / {sum(schedule) / len(schedule):.1f} avg: {bare:.1f} ms (tokenbench TTFT / bare: {ours})")
    return "physical-limit (bare) TTFT medians: " + "; ".join(parts) if parts else "physical-limit rows: none timed"


def table(rows: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    from tabulate import tabulate

    out = []
    for r in rows:
        if "error" in r:
            out.append([r["strategy"], r["budget"], r["stage"], "—", "—", "—", "—", "—", "—", "—", "—", "—", "—", "failed: " + r["error"][:60]])
            continue
        lat = r["timing"]
        out.append(
            [
                r["strategy"],
                r["budget"],
                r["stage"],
                f"{r['tokens_in']} / {r['layer_avg']:.1f}",
                "—" if not r["flops"] else f"{r['flops']['total_prefill'] / 1e9:.4g}",
                f"{_ms(lat['ttft_median'])} [{_ms(lat['ttft_iqr'])}]",
                f"{_ms(lat['vision_median'])}",
                f"{r['measured']:.2f}×",
                f"{r['implied']:.2f}×",
                f"{r['ratio']:.3f}",
                "—" if r.get("limit") is None else f"{r['limit']:.2f}×",
                "—" if r.get("vs_limit") is None else f"{r['vs_limit']:.3f}",
                f"{_ms(lat['selection_median'], 2)} ({100 * r['selection_share']:.2f}%)",
                "—" if r["target"] is None or r["pass"] is None else f"≥{r['target']:.2f}, ≤2%: " + ("pass" if r["pass"] else "MISS"),
            ]
        )
    headers = [
        "strategy",
        "budget",
        "stage",
        "visual tokens in / layer-avg",
        "prefill GFLOPs",
        "TTFT ms, median [IQR]",
        "vision enc. ms",
        "measured speed-up",
        "FLOPs-implied speed-up",
        "ratio",
        "physical limit",
        "measured / limit",
        "selection ms (% base TTFT)",
        "target",
    ]
    return tabulate(out, headers=headers, tablefmt=fmt, disable_numparse=True)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def environment_lines(adapter: Any, d: Dims, device: str, dtype: str, extra: Sequence[str] = ()) -> list[str]:
    from tokenbench.timing import timing_environment

    env = timing_environment(adapter, device)
    cpu = cpu_model()
    return [
        f"model: LLaVA architecture, random weights; LM Llama hidden {d.hidden}, {d.layers} layers, {d.heads} heads / {d.kv_heads} KV, "
        f"FFN {d.ffn}, vocab {d.vocab} ({lm_params(d) / 1e9:.2f} B LM parameters); vision CLIP {d.image}px / patch {d.patch} "
        f"({(d.image // d.patch) ** 2} visual tokens), {d.v_layers} layers × {d.v_hidden}",
        f"device {env['device_name']} ({cpu}, {env.get('cpu_count')} cores), {env['threads']} threads, {dtype}, {env.get('attention')} attention, "
        f"batch 1, timer {env['timer']}; load average (1 min) at the end {env.get('load_average_1min')}",
        f"torch {env['torch']}, transformers {env['transformers']}, fvcore {env['fvcore']}, tokenbench {env['tokenbench']}, python {env['python']}",
        "FLOPs = 2 × multiply-adds (fvcore, SDPA counted), prefill = vision tower + projector + LLM prefill + LM head on the last position",
        "TTFT = vision encoder + signals + selection + prefill up to the first token's logits (preprocessing excluded); "
        "measured speed-up = baseline TTFT / strategy TTFT (medians); ratio = measured / FLOPs-implied",
        *extra,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    p.add_argument("--keep", type=int, default=128, help="visual tokens kept (default 128 of 576 = 22.2%%)")
    p.add_argument("--samples", type=int, default=3, help="distinct images/prompts timed")
    p.add_argument("--repeats", type=int, default=20, help="at most this many timed passes over the samples (each round: every strategy once, rotating order)")
    p.add_argument("--time-budget", type=float, default=450.0, help="start no timed round after this many seconds of wall time (default 450)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per strategy first (>= 2)")
    p.add_argument("--strategies", help="comma list (default: every registered strategy)")
    p.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test in seconds")
    p.add_argument("--output", "-o", help="also write the table (markdown) to this file")
    p.add_argument("--profile", default="misses", help="profile these strategies after timing (comma list), 'misses' (default: those below target) or 'none'")
    args = p.parse_args(argv)
    wall0 = time.perf_counter()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights must not hit the slow denormal path (no effect on FLOPs)
    d = TINY if args.tiny else Dims()
    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.budget import Budget

    print(f"building the model ({'tiny' if args.tiny else f'{lm_params(d) / 1e9:.2f} B LM'}) ...", file=sys.stderr)
    model, proc = build_llava(d)
    adapter = LlavaAdapter(model, proc, "benchmark/llava-qwen2-0.5b-dims-random" if not args.tiny else "benchmark/tiny-random", "cpu", "float32")
    n_vis = (d.image // d.patch) ** 2
    keep = min(args.keep, n_vis) if not args.tiny else max(1, round(n_vis * 128 / 576))
    strategies, notes = registered_strategies(args.strategies.split(",") if args.strategies else None)
    for n in notes:
        print(n, file=sys.stderr)
    samples = synthetic_samples(args.samples, d.image)
    rows = measure(
        adapter,
        strategies,
        [Budget("count", keep)],
        samples,
        repeats=args.repeats,
        warmup=args.warmup,
        new_tokens=1,
        device="cpu",
        deadline=wall0 + args.time_budget,
        log=lambda m: print(m, file=sys.stderr),
    )
    timed_wall = time.perf_counter() - wall0
    if args.profile == "misses":
        to_profile = [r["strategy"] for r in rows if r.get("pass") is False]
    else:
        to_profile = [] if args.profile == "none" else [n for n in args.profile.split(",") if n]
    profile = ""
    if to_profile:
        print(f"profiling {', '.join(to_profile)} ...", file=sys.stderr)
        profile = (
            "\n\nwhere the time goes (ms per call, cProfile, median of 3; cProfile adds Python-call overhead, "
            "so compare columns, not totals with the table above):\n\n"
            + breakdown_table(adapter, rows, strategies, [Budget("count", keep)], samples, to_profile)
        )
    wall = time.perf_counter() - wall0
    base = next(r for r in rows if r["strategy"] == "baseline")
    n_calls = base.get("timing", {}).get("n", 0)
    extra = [
        f"{keep} of {n_vis} visual tokens kept ({100 * keep / n_vis:.1f}%); text tokens {base.get('text_tokens')}; "
        f"{n_calls} timed calls per strategy ({args.samples} samples in turn, strategies interleaved in rotating order, "
        f"rounds until the {args.time_budget:.0f} s budget or {args.repeats} passes), {args.warmup} warm-up runs each",
        f"targets: measured / physical limit ≥ {LIMIT_TARGET:.2f}; selection ≤ 2% of the baseline TTFT; "
        "physical limit: the stock model sliced by hand to the strategy's visual tokens per layer (no tokenbench code), same timed loop",
        limit_line(rows),
        *notes,
        f"wall time {wall:.0f} s ({timed_wall:.0f} s model build, FLOPs tracing, warm-up and timing; the rest profiling); "
        f"load average (1 min) at the start {load0:.2f}",
    ]
    text = table(rows) + "\n\n" + "\n".join("- " + ln for ln in environment_lines(adapter, d, "cpu", "float32", extra)) + profile
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
