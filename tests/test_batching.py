"""The default batch and dtype per device, and a batch that runs out of memory retried sample by sample."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tokenbench import Budget, get_registry
from tokenbench.batching import batch_for_memory, bytes_per_sample, choose_batch_size
from tokenbench.harness import evaluate
from tokenbench.store import Store


def test_bytes_per_sample_by_hand() -> None:
    # one layer, hidden 8, 2 heads of 4, 1 KV head, intermediate 16, 10 tokens, bf16:
    # KV 2 * 1 * 1 * 4 = 8 per token; widest 3 * 16 + 4 * 8 = 80; 1.5 * 10 * 88 * 2 bytes = 2640
    cfg = SimpleNamespace(num_hidden_layers=1, hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1)
    assert bytes_per_sample(cfg, 10, "bfloat16") == 2640
    assert bytes_per_sample(cfg, 10, "float32") == 5280


def test_batch_for_memory_rounds_down_to_a_power_of_two() -> None:
    assert [batch_for_memory(free, 100) for free in (0, 125, 250, 1000, 3000, 10**9)] == [1, 1, 2, 8, 16, 32]
    assert batch_for_memory(10**9, 100, ceiling=12) == 8


def test_cpu_keeps_batch_8() -> None:
    assert choose_batch_size(object(), "cpu", "float32", 576) == (8, "the cpu default")


def test_cuda_defaults_to_bfloat16_on_the_command_line() -> None:
    import argparse

    from tokenbench.cli_options import add_budget_options, add_model_options, model_request

    p = argparse.ArgumentParser()
    add_model_options(p)
    add_budget_options(p)
    p.add_argument("--strategies", default="random")
    assert model_request(p.parse_args(["--device", "cuda"])).dtype == "bfloat16"
    assert model_request(p.parse_args(["--device", "cpu"])).dtype == "float32"
    assert model_request(p.parse_args(["--device", "cuda", "--dtype", "float16"])).dtype == "float16"


def test_a_batch_out_of_memory_is_retried_alone(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenbench.adapters.llava import LlavaAdapter

    adapter = LlavaAdapter.load(str(tiny_llava))
    task = get_registry().load("tasks", "jsonl")(str(jsonl_task))
    samples = list(task.load())
    real = adapter.generate
    calls: list[int] = []

    def generate(batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(batch))
        if len(batch) > 1 or batch[0].id == samples[2].id:  # batches never fit; sample 2 does not fit even alone
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nGPU 0 has a total capacity of ...")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(adapter, "generate", generate)
    store = Store(tmp_path / "r.db")
    run = store.open_run({"oom": True})
    strategy = get_registry().load("strategies", "random")()
    evaluate(adapter, task, samples, strategy, Budget("fraction", 0.25), store, run, batch_size=4)
    records = {r.sample_id: r for r in store.samples(run)}
    assert calls == [4, 1, 1, 1, 1, 2, 1, 1]  # each failed batch reruns one sample at a time
    assert [sid for sid, r in records.items() if r.error] == [samples[2].id]
    assert records[samples[2].id].error == "out of memory on cpu for this sample alone (batch of 1); it needs a device with more free memory"
    assert all(r.prediction is not None for sid, r in records.items() if sid != samples[2].id)
