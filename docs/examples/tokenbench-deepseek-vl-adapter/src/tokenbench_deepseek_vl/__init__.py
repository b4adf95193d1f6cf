"""A complete third-party tokenbench adapter plugin: one adapter class and one hook.

The hook registers the class lazily, as ``"module:Class"`` with its name, description
and the ``config.json`` ``model_type`` it serves, so ``tokenbench list`` never imports
torch and ``tokenbench compare --model <a DeepSeek-VL checkpoint>`` picks it by itself.
It imports only ``tokenbench`` (the public API).
"""

from __future__ import annotations

import tokenbench


@tokenbench.hookimpl
def register_adapters(register: tokenbench.Register) -> None:
    register(
        "tokenbench_deepseek_vl.adapter:DeepseekVLAdapter",
        name="deepseek_vl",
        description="DeepSeek-VL (DeepseekVLForConditionalGeneration), SigLIP last-layer saliency, 1-D RoPE (example plugin)",
        model_types=("deepseek_vl",),
    )
