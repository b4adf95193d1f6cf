"""Attention-based strategies under every attention kernel: the kept sets do not depend on it.

FastV, SparseVLM, PyramidDrop, DART and SPpruner read attention from a decoder layer. The
decoding loop never asks a kernel for probabilities (SDPA and FlashAttention-2 have none
to give); it recomputes the rows a stage asks for from that layer's queries and keys.
So the same model loaded with ``sdpa`` and with ``eager`` must keep the same tokens,
sample for sample, and predict the same text, in a left-padded batch whose samples
differ in length (the masks of :mod:`tokenbench.attention_masks`). The FlashAttention-2
path runs in the GPU script (``benchmarks/gpu.sh``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tokenbench import Budget, get_registry
from tokenbench.task import Sample

STRATEGIES = get_registry().names("strategies")
LLM_BUDGET = Budget("fraction", 0.25)


def _samples(n: int, size: int) -> list[Sample]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    questions = ["what is it", "how many shapes are in the picture", "colour", "is the red square left of the blue circle or right"]
    return [
        Sample(id=f"s{i}", image=Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), question=questions[i % 4], answers=("x",))
        for i in range(n)
    ]


def _pair(cls: Any, path: Path, **options: Any) -> dict[str, Any]:
    pair = {kernel: cls.load(str(path), attn_implementation=kernel, **options) for kernel in ("sdpa", "eager")}
    for adapter in pair.values():
        adapter.eos_ids = set()  # random weights: decode every token, so that every step is compared
    return pair


@pytest.fixture(scope="module")
def llava(tiny_llava: Path) -> dict[str, Any]:
    from tokenbench.adapters.llava import LlavaAdapter

    return _pair(LlavaAdapter, tiny_llava)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tokenbench.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
    from tokenbench.testing import tiny_qwen2_5_vl_checkpoint

    return _pair(Qwen2_5_VLAdapter, tiny_qwen2_5_vl_checkpoint(tmp_path_factory.mktemp("q") / "tiny-qwen", layers=4))


def _reads_attention(name: str, adapter: Any) -> bool:
    strategy = get_registry().load("strategies", name)()
    return any("attention" in stage.signals for stage in strategy.schedule(adapter.info))


def test_the_kernels_are_what_was_asked_for(llava: dict[str, Any]) -> None:
    for kernel, adapter in llava.items():
        assert adapter.model.config.text_config._attn_implementation == kernel
        assert adapter.decoder_parts().attention == kernel
        assert adapter.describe()["attention"] == kernel  # part of every run's key
    assert {"fastv", "sparsevlm", "pdrop"} <= {n for n in STRATEGIES if _reads_attention(n, llava["sdpa"])}


@pytest.mark.parametrize("family", ["llava", "qwen"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_kept_sets_and_predictions_do_not_depend_on_the_kernel(name: str, family: str, request: pytest.FixtureRequest) -> None:
    pair = request.getfixturevalue(family)
    if get_registry().load("strategies", name).needs_ground_truth:
        pytest.skip(f"{name}: needs samples of the shapes task")
    samples = _samples(4, 48 if family == "llava" else 40)
    prompts = [s.question for s in samples]
    strategy = get_registry().load("strategies", name)()
    # a left-padded batch of prompts of four lengths, and one sample alone (no padding: eager's own causal mask)
    out = {k: a.generate(samples, prompts, strategy, LLM_BUDGET, seed=0, max_new_tokens=4) for k, a in pair.items()}
    alone = {k: a.generate(samples[3:], prompts[3:], strategy, LLM_BUDGET, seed=0, max_new_tokens=4) for k, a in pair.items()}
    for sdpa, eager in zip(out["sdpa"] + alone["sdpa"], out["eager"] + alone["eager"]):
        assert sdpa.kept == eager.kept, f"{name} on {family}: kept sets differ between sdpa and eager"
        assert sdpa.tokens_per_layer == eager.tokens_per_layer
        assert sdpa.prediction == eager.prediction


def test_flash_attention_off_cuda_is_one_line(tiny_llava: Path) -> None:
    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"^--attn-implementation flash_attention_2 runs on CUDA devices only \(--device cpu\); use sdpa or eager here$"):
        LlavaAdapter.load(str(tiny_llava), attn_implementation="flash_attention_2")
