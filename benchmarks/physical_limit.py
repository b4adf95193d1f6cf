"""The physical limit of a pruning speed-up: the stock model sliced by hand, no tokenbench code on the path.

A FLOPs ratio is not what a CPU (or a GPU) can deliver: smaller matrix products run at a
lower rate, so a prefill over 197 tokens is not 3.4x faster than one over 645 even with no
overhead at all. The fair target of a strategy is the same model, run by plain code, with
the same number of visual tokens entering every decoder layer. :func:`bare_first_token`
is that code: the stock vision tower and projector
(``model.model.get_image_features``), the stock embedding, then the stock decoder layers
one by one (``lm.layers``, ``lm.rotary_emb``, a ``DynamicCache``, SDPA's own causal mask),
dropping visual positions (the last ones: which ones does not change the cost) wherever
the schedule says fewer tokens enter a layer, and the stock norm and LM head on the last
position.

:class:`LimitAdapter` puts these calls into tokenbench's interleaved timed loop
(:func:`tokenbench.timing.timed_loop`) beside the strategies, so that the limit rows and
the strategy rows share warm-up, rotation and drift: a :class:`PhysicalLimit` pseudo-
strategy carries a per-layer schedule; any other strategy goes to the real adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch

from tokenbench import Strategy, mark_phase


class PhysicalLimit(Strategy):
    """Not a strategy: the label of a bare, hand-sliced run with ``tokens_per_layer`` visual tokens entering each layer."""

    name = "physical-limit"
    description = "the stock model sliced by hand to a schedule of visual-token counts (benchmarks only)"

    def __init__(self, tokens_per_layer: Sequence[int]) -> None:
        super().__init__()
        self.tokens_per_layer = tuple(int(n) for n in tokens_per_layer)

    def schedule(self, model: Any) -> tuple[()]:
        return ()

    def select(self, ctx: Any) -> Any:  # pragma: no cover - never called: LimitAdapter runs it
        raise NotImplementedError


@torch.no_grad()
def bare_first_token(model: Any, processor: Any, image: Any, text: str, tokens_per_layer: Sequence[int]) -> torch.Tensor:
    """The first token's logits of the stock LLaVA ``model`` with ``tokens_per_layer[l]`` visual tokens entering layer ``l``."""
    from transformers import DynamicCache

    cfg = model.config
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    ids = inputs["input_ids"]
    mark_phase("vision_start")
    feats = model.model.get_image_features(
        pixel_values=inputs["pixel_values"].to(model.dtype),
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        return_dict=True,
    ).pooler_output
    lm = model.model.language_model
    hidden = lm.embed_tokens(ids)
    visual = ids == cfg.image_token_id
    hidden[visual] = torch.cat(list(feats)).to(hidden.dtype)
    position = torch.arange(ids.shape[1])[None]
    cache = DynamicCache(config=cfg.text_config)
    present = int(visual.sum())
    rope = None
    for layer, wanted in zip(lm.layers, tokens_per_layer):
        if wanted < present:  # drop the last (present - wanted) visual positions
            vis_pos = torch.nonzero(visual[0]).squeeze(1)
            keep = torch.ones(hidden.shape[1], dtype=torch.bool)
            keep[vis_pos[wanted:]] = False
            hidden, position, visual = hidden[:, keep], position[:, keep], visual[:, keep]
            present, rope = wanted, None
        if rope is None:
            rope = lm.rotary_emb(hidden, position)
        hidden = layer(hidden, attention_mask=None, position_ids=position, position_embeddings=rope, cache=cache, use_cache=True)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    logits = model.lm_head(lm.norm(hidden[:, -1:]))[:, -1].float()
    mark_phase("first_token")
    return logits


class LimitAdapter:
    """The real adapter, except that a :class:`PhysicalLimit` runs :func:`bare_first_token` (one new token)."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    def generate(self, samples: Sequence[Any], prompts: Sequence[str], strategy: Any, budget: Any, **kwargs: Any) -> list[Any]:
        if not isinstance(strategy, PhysicalLimit):
            return list(self.adapter.generate(samples, prompts, strategy, budget, **kwargs))
        if kwargs.get("max_new_tokens", 1) != 1:
            raise ValueError("the physical-limit rows time the first token only (--new-tokens 1)")
        out = []
        for sample, prompt in zip(samples, prompts):
            bare_first_token(self.adapter.model, self.adapter.processor, sample.load_image(), self.adapter.chat_prompt(prompt), strategy.tokens_per_layer)
            out.append(SimpleNamespace(selection_seconds=0.0))
        return out
