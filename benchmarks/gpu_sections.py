"""The GPU script's second and third tables: attention kernels, and throughput at batch 1, 8 and 32.

* :func:`kernel_section`: the baseline and the attention-based strategies (their
  signals are recomputed from q and k, so they run under any kernel) timed under each
  attention kernel of the language model: ``sdpa`` and ``flash_attention_2`` on CUDA
  (FA2 skipped with a line when ``flash-attn`` is not installed), ``sdpa`` and ``eager``
  on a CPU. The kernel is switched on the built model (``set_attn_implementation`` on
  the text config); the kept sets of every strategy are checked equal to SDPA's.
* :func:`throughput_section`: samples per second of whole ``generate`` calls (vision,
  selection, prefill and the forced new tokens) at batch 1, 8 and 32 for the baseline,
  a vision-stage and an LLM-stage strategy. A batch the device cannot hold, by the
  estimate of :mod:`tokenbench.batching`, is skipped with a line (a smaller GPU).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

THROUGHPUT_STRATEGIES = ("baseline", "visionzip", "fastv")
KERNEL_STRATEGIES = ("baseline", "fastv", "sparsevlm", "pdrop")


def kernels_to_run(device: str, requested: str) -> tuple[list[str], list[str]]:
    """(kernels to time, lines about the ones skipped) for ``--kernels`` (``auto`` or a comma list)."""
    cuda = device.startswith("cuda")
    wanted = (["sdpa", "flash_attention_2"] if cuda else ["sdpa", "eager"]) if requested == "auto" else [k.strip() for k in requested.split(",") if k.strip()]
    run, skipped = [], []
    for kernel in wanted:
        if kernel.startswith("flash_attention") and not cuda:
            skipped.append(f"{kernel}: skipped (CUDA only)")
        elif kernel == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            skipped.append("flash_attention_2: skipped (flash-attn is not installed: pip install flash-attn)")
        else:
            run.append(kernel)
    return run, skipped


def set_kernel(adapter: Any, kernel: str) -> None:
    """Switch the language model of a built adapter to ``kernel`` (the vision tower keeps its own)."""
    adapter.model.set_attn_implementation({"text_config": kernel})
    adapter.parts.attention = kernel


def _overlap(kept: dict[str, list[int]], ref: dict[str, list[int]]) -> str:
    """The share of the reference kernel's kept tokens this kernel also kept, over every stage (100 %: the same sets).

    In float32 it is 100 % (tests/test_attention_kernels.py); in bf16/fp16 the kernels round the layer outputs that
    the signals read differently, so near-ties can flip.
    """
    total = sum(len(v) for v in ref.values())
    common = sum(len(set(v) & set(kept.get(k, []))) for k, v in ref.items())
    return "—" if total == 0 else f"{100 * common / total:.1f}%"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def kernel_section(
    adapter: Any,
    strategies: Sequence[Any],
    budget: Any,
    samples: Sequence[Any],
    *,
    kernels: Sequence[str],
    skipped: Sequence[str],
    measure: Callable[..., list[dict[str, Any]]],
    device: str,
    deadline: float,
    log: Callable[[str], None],
) -> str:
    """A markdown table: TTFT and decode per kernel for the baseline and the attention-based strategies at ``budget``."""
    from tabulate import tabulate

    from tokenbench.budget import FULL

    chosen = [s for s in strategies if s.name in KERNEL_STRATEGIES]
    table, kept_ref, notes = [], {}, list(skipped)
    for i, kernel in enumerate(kernels):
        try:
            set_kernel(adapter, kernel)
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks: say so, go on
            notes.append(f"{kernel}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        share = time.perf_counter() + (deadline - time.perf_counter()) / (len(kernels) - i)
        rows = measure(adapter, chosen, [budget], samples, repeats=3, warmup=2, new_tokens=8, device=device, memory=False, deadline=share, log=log)
        same = []
        for strategy in chosen:
            res = adapter.generate(samples[:1], [samples[0].question], strategy, FULL if strategy.keeps_all else budget, max_new_tokens=1)[0]
            if i == 0:
                kept_ref[strategy.name] = res.kept
            same.append(_overlap(res.kept, kept_ref.get(strategy.name, {})))
        for row, equal in zip(rows, same):
            if "error" in row:
                table.append([kernel, row["strategy"], row["budget"], "—", "—", "—", "—", "failed: " + row["error"][:60]])
                continue
            lat = row["timing"]
            decode = lat["decode_per_token_median"]
            table.append(
                [
                    kernel,
                    row["strategy"],
                    row["budget"],
                    f"{lat['ttft_median']:.2f}",
                    f"{row['measured']:.2f}×",
                    "—" if decode is None else f"{decode:.2f}",
                    equal,
                    "",
                ]
            )
    set_kernel(adapter, kernels[0] if kernels else "sdpa")
    headers = [
        "kernel",
        "strategy",
        "budget",
        "TTFT ms (median)",
        "TTFT speed-up (same kernel)",
        "decode ms/token",
        f"kept ∩ {kernels[0] if kernels else 'sdpa'}'s",
        "note",
    ]
    body = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True) if table else "no kernel could run"
    return "\n\n".join([body, *("- " + n for n in notes)])


def throughput_section(
    adapter: Any,
    strategies: Sequence[Any],
    budget: Any,
    samples: Sequence[Any],
    *,
    batches: Sequence[int],
    new_tokens: int,
    device: str,
    dtype: str,
    deadline: float,
    log: Callable[[str], None],
) -> str:
    """A markdown table: samples per second at each batch size, and the speed-up over the baseline at the same batch."""
    from tabulate import tabulate

    from tokenbench.batching import bytes_per_sample
    from tokenbench.budget import FULL

    chosen = [s for s in strategies if s.name in THROUGHPUT_STRATEGIES]
    eos, adapter.eos_ids = adapter.eos_ids, set()  # random weights: every call decodes exactly new_tokens
    rows, notes = [], []
    probe = adapter.generate(samples[:1], [samples[0].question], chosen[0], FULL, max_new_tokens=1)[0]
    per_sample = bytes_per_sample(adapter.text_config, probe.num_visual + probe.text_tokens + new_tokens, dtype)
    try:
        for batch in batches:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                free = torch.cuda.mem_get_info(torch.device(device))[0]
                if batch * per_sample > 0.8 * free:
                    notes.append(f"batch {batch}: skipped, needs ~{batch * per_sample / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
                    continue
            items = [samples[i % len(samples)] for i in range(batch)]
            prompts = [s.question for s in items]
            base_rate = None
            for strategy in chosen:
                if time.perf_counter() > deadline:
                    notes.append(f"batch {batch}, {strategy.name}: not measured (time budget)")
                    continue
                b = FULL if strategy.keeps_all else budget
                try:
                    adapter.generate(items, prompts, strategy, b, max_new_tokens=new_tokens)  # warm-up
                    _sync(device)
                    t0, calls = time.perf_counter(), 0
                    while calls < 2 or (calls < 5 and time.perf_counter() - t0 < 1.0):
                        adapter.generate(items, prompts, strategy, b, max_new_tokens=new_tokens)
                        calls += 1
                    _sync(device)
                except torch.OutOfMemoryError:
                    notes.append(f"batch {batch}, {strategy.name}: out of memory")
                    torch.cuda.empty_cache()
                    continue
                rate = batch * calls / (time.perf_counter() - t0)
                base_rate = rate if strategy.name == "baseline" else base_rate
                speedup = "—" if base_rate is None or strategy.name == "baseline" else f"{rate / base_rate:.2f}×"
                rows.append([str(batch), strategy.name, b.label, f"{rate:.1f}", speedup, str(calls)])
                log(f"throughput batch {batch} {strategy.name}: {rate:.1f} samples/s")
    finally:
        adapter.eos_ids = eos
    headers = ["batch", "strategy", "budget", "samples/s", "vs baseline (same batch)", "timed calls"]
    body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) if rows else "nothing measured"
    return "\n\n".join([body, *("- " + n for n in notes)])
