"""The default batch size and dtype of a run: what the device holds, printed, never a silent guess.

On a CPU the batch is 8 and the dtype float32 (as before). On CUDA the dtype defaults to
bfloat16 and the batch to what fits in the memory left after the weights loaded: each
sample of a batch holds, per token of its prompt (the model's visual tokens and 128
text tokens), its KV cache in every layer plus the widest prefill activations of one
layer (the MLP's gate, up and activation, the attention's four projections), with half
as much again for the allocator and the vision tower; the batch takes 80 % of the free
memory at that rate, rounded down to a power of two, between 1 and 32. A sample that
still runs out of memory is retried alone before it is recorded as an error
(:mod:`tokenbench.harness`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CPU_BATCH", "MAX_BATCH", "batch_for_memory", "bytes_per_sample", "choose_batch_size", "default_dtype"]

CPU_BATCH = 8
MAX_BATCH = 32
TEXT_TOKENS = 128
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def default_dtype(device: str) -> str:
    """bfloat16 on CUDA, float32 elsewhere.

    >>> default_dtype("cuda:1"), default_dtype("cpu")
    ('bfloat16', 'float32')
    """
    return "bfloat16" if device.startswith("cuda") else "float32"


def bytes_per_sample(text_config: Any, tokens: int, dtype: str) -> int:
    """Memory one sample of ``tokens`` prompt tokens needs in a batch (see the module docstring).

    >>> from types import SimpleNamespace
    >>> llama7b = SimpleNamespace(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
    >>> round(bytes_per_sample(llama7b, 576 + 128, "bfloat16") / 2**20)  # MiB: LLaVA-1.5-7B, bf16
    628
    """
    layers, hidden = int(text_config.num_hidden_layers), int(text_config.hidden_size)
    heads = int(text_config.num_attention_heads)
    kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text_config, "head_dim", None) or hidden // heads)
    kv = 2 * layers * kv_heads * head_dim
    widest = 3 * int(text_config.intermediate_size) + 4 * hidden
    return int(1.5 * tokens * (kv + widest) * _BYTES.get(dtype, 4))


def batch_for_memory(free_bytes: int, per_sample: int, ceiling: int = MAX_BATCH) -> int:
    """The largest power of two ≤ ``ceiling`` whose samples take at most 80 % of ``free_bytes``; at least 1.

    >>> batch_for_memory(120 * 2**30, 628 * 2**20), batch_for_memory(8 * 2**30, 628 * 2**20), batch_for_memory(2**20, 2**30)
    (32, 8, 1)
    """
    fits = int(0.8 * free_bytes) // max(per_sample, 1)
    batch = 1
    while batch * 2 <= min(fits, ceiling):
        batch *= 2
    return batch


def choose_batch_size(adapter: Any, device: str, dtype: str, visual_tokens: int | None) -> tuple[int, str]:
    """``(batch size, why)`` for a run whose ``--batch-size`` was not given."""
    if not device.startswith("cuda"):
        return CPU_BATCH, f"the {device} default"
    import torch

    config = getattr(adapter, "text_config", None)
    if config is None or visual_tokens is None:
        return CPU_BATCH, f"{type(adapter).__name__} gives no language-model config to size it by"
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    tokens = visual_tokens + TEXT_TOKENS
    per_sample = bytes_per_sample(config, tokens, dtype)
    batch = batch_for_memory(free, per_sample)
    return batch, f"{device}, {dtype}: {free / 2**30:.1f} GiB free after loading, ~{per_sample / 2**30:.2f} GiB per sample of {tokens} tokens"
