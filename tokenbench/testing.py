"""Helpers for testing strategies and adapters without downloads.

- :func:`check_strategy_contract` is the contract every strategy must meet; the
  project's own suite runs it over every registered strategy, and a plugin package
  can run it on its own class;
- :func:`tiny_llava_checkpoint`, :func:`tiny_qwen2_vl_checkpoint`,
  :func:`tiny_qwen2_5_vl_checkpoint`, :func:`word_tokenizer`, :func:`write_jsonl_task`,
  :func:`write_multi_image_jsonl_task` and :func:`write_video_jsonl_task` make tiny
  checkpoints and task files (:mod:`tokenbench.fixtures`);
- :func:`tiny_llava_next_checkpoint`, :func:`tiny_llava_onevision_checkpoint` and
  :func:`tiny_internvl_checkpoint` make tiny checkpoints of three more families
  (:mod:`tokenbench.fixtures_families`).
"""

from __future__ import annotations

from tokenbench.contract import check_strategy_contract, contract_adapter, contract_samples
from tokenbench.fixtures import (
    CHAT_TEMPLATE,
    tiny_llava_checkpoint,
    tiny_qwen2_5_vl_checkpoint,
    tiny_qwen2_vl_checkpoint,
    word_tokenizer,
    write_jsonl_task,
    write_multi_image_jsonl_task,
    write_video_jsonl_task,
)
from tokenbench.fixtures_families import tiny_internvl_checkpoint, tiny_llava_next_checkpoint, tiny_llava_onevision_checkpoint

__all__ = [
    "CHAT_TEMPLATE",
    "check_strategy_contract",
    "contract_adapter",
    "contract_samples",
    "tiny_internvl_checkpoint",
    "tiny_llava_checkpoint",
    "tiny_llava_next_checkpoint",
    "tiny_llava_onevision_checkpoint",
    "tiny_qwen2_5_vl_checkpoint",
    "tiny_qwen2_vl_checkpoint",
    "word_tokenizer",
    "write_jsonl_task",
    "write_multi_image_jsonl_task",
    "write_video_jsonl_task",
]
