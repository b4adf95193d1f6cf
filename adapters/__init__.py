"""The built-in model adapters, registered through the same entry point a third-party package uses."""

from __future__ import annotations

from tokenbench.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    register(
        "tokenbench.adapters.llava:LlavaAdapter",
        name="llava",
        description="LLaVA-1.5 family (LlavaForConditionalGeneration), CLIP [CLS] saliency, 1-D RoPE",
        model_types=("llava",),
    )
