"""The built-in strategies, registered through the same entry point a third-party package uses."""

from __future__ import annotations

from tokenbench.hookspecs import Register, hookimpl

BUILTINS = (
    ("baseline", "baseline:Baseline", "Keeps every visual token (the unreduced model)."),
    ("random", "random_drop:RandomDrop", "Keeps b visual tokens drawn uniformly, seeded per sample (control)."),
    ("pooling", "pooling:Pooling", "2-D average pooling of the token grid to about b cells (control)."),
    ("attention-only", "attention_only:AttentionOnly", "Top-b tokens by encoder [CLS] saliency (FasterVLM)."),
    ("fastv", "fastv:FastV", "Top-b visual tokens by last-token attention after layer K-1 (FastV, ECCV 2024)."),
    ("sparsevlm", "sparsevlm:SparseVLM", "Text-rater attention pruning at 3 layers with token recycling (SparseVLM, ICML 2025)."),
    ("pdrop", "pdrop:PyramidDrop", "Last-token attention drops at the ends of 4 stages, layer-averaged budget (PyramidDrop, CVPR 2025)."),
    ("dart", "dart:DART", "Pivot tokens plus the tokens least duplicated with them, after layer K-1 (DART, EMNLP 2025)."),
    ("divprune", "divprune:DivPrune", "Greedy max-min cosine diversity of the projected visual tokens (DivPrune, CVPR 2025)."),
    ("cdpruner", "cdpruner:CDPruner", "Conditional DPP: prompt relevance x token diversity, greedy MAP (CDPruner, NeurIPS 2025)."),
    ("visionzip", "visionzip:VisionZip", "Dominant tokens by [CLS] attention + contextual tokens merged by similarity (VisionZip, CVPR 2025)."),
    ("vispruner", "vispruner:VisPruner", "Important tokens by [CLS] attention + diverse tokens by similarity de-duplication (VisPruner, ICCV 2025)."),
    ("sppruner", "sppruner:SPPruner", "Subject focus + context ring scan + merge (reconstruction of SPpruner, arXiv 2605.20950)."),
)


@hookimpl
def register_strategies(register: Register) -> None:
    for name, target, description in BUILTINS:
        register(f"tokenbench.strategies.{target}", name=name, description=description)
