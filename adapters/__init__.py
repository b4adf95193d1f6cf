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
    register(
        "tokenbench.adapters.llava_next:LlavaNextAdapter",
        name="llava_next",
        description="LLaVA-NeXT (LlavaNextForConditionalGeneration): AnyRes base + unpadded crops with image_newline, CLIP [CLS] saliency, 1-D RoPE",
        model_types=("llava_next",),
    )
    register(
        "tokenbench.adapters.internvl:InternVLAdapter",
        name="internvl",
        description="InternVL3 (InternVLForConditionalGeneration): dynamic tiles + thumbnail, pixel shuffle, InternViT [CLS] saliency, 1-D RoPE",
        model_types=("internvl",),
    )
    register(
        "tokenbench.adapters.llava_onevision:LlavaOnevisionAdapter",
        name="llava_onevision",
        description="LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): SigLIP, AnyRes-max with image_newline, video pooled 2x2, received-attention saliency",
        model_types=("llava_onevision",),
    )
    register(
        "tokenbench.adapters.qwen2_vl:Qwen2VLAdapter",
        name="qwen2_vl",
        description="Qwen2-VL (Qwen2VLForConditionalGeneration), last vision-block saliency, 3-D M-RoPE",
        model_types=("qwen2_vl",),
    )
    register(
        "tokenbench.adapters.qwen2_5_vl:Qwen2_5_VLAdapter",
        name="qwen2_5_vl",
        description="Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration), last full-attention-block saliency, 3-D M-RoPE",
        model_types=("qwen2_5_vl",),
    )
