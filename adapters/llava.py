"""LLaVA-1.5 adapter: any ``LlavaForConditionalGeneration`` checkpoint, stock ``transformers``.

Vision stage: the projected visual tokens, the token grid, the encoder saliency (the
[CLS] row of the attention of the CLIP layer the features are taken from,
head-averaged) and the embedded prompt. LLM stage: after any decoder layer, through
:mod:`tokenbench.adapters.decoding`. Kept tokens keep their original 1-D position ids.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from tokenbench.adapter import Adapter, GenerationResult, TokenCounts
from tokenbench.flops_meter import FlopsMeter
from tokenbench.checkpoints import load_pretrained, model_identity, torch_dtype
from tokenbench.decoding import DecoderParts, SampleSetup, TokenLayout, eos_token_ids, make_stop, prefill_and_decode
from tokenbench.budget import Budget, sample_generator
from tokenbench.strategy import ModelInfo, Strategy
from tokenbench.task import Sample
from tokenbench.timing import mark_phase

DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"


class LlavaAdapter(Adapter):
    name = "llava"
    description = "LLaVA-1.5 family (LlavaForConditionalGeneration), CLIP [CLS] saliency, 1-D RoPE"
    family = "llava"
    model_types = ("llava",)

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.device = device
        self.dtype = dtype
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        text = cfg.text_config
        self.info = ModelInfo(num_layers=text.num_hidden_layers, hidden_size=text.hidden_size, name=source)
        lm = model.model.language_model
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.parts = DecoderParts(
            embed=lm.embed_tokens,
            layers=list(lm.layers),
            norm=lm.norm,
            lm_head=model.lm_head,
            rotary=lambda h, pos: lm.rotary_emb(h, pos[..., 0]),
            apply_rope=lambda x, cos, sin: apply_rotary_pos_emb(x, x, cos, sin)[0],
            position_ids=lambda pos: pos[..., 0],
            make_cache=lambda: _dynamic_cache(text),
        )
        self.meter = FlopsMeter(self.parts, text, self._vision_macs)
        processor.tokenizer.padding_side = "left"
        self.eos_ids = eos_token_ids(model, processor.tokenizer)

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> LlavaAdapter:
        from transformers import LlavaForConditionalGeneration

        hf, processor = load_pretrained(LlavaForConditionalGeneration, model, device=device, dtype=dtype, **options)
        return cls(hf, processor, model, device, dtype)

    @classmethod
    def visual_token_capacity(cls, config: dict[str, Any]) -> int | None:
        vision = config.get("vision_config", {})
        size, patch = vision.get("image_size", 336), vision.get("patch_size", 14)
        n = (size // patch) ** 2
        return n if config.get("vision_feature_select_strategy", "default") == "default" else n + 1

    def describe(self) -> dict[str, Any]:
        return model_identity(self.model, self.source, self.device, self.dtype, family=self.family)

    def flops_for(self, counts: TokenCounts) -> dict[str, int]:
        return self.meter.measure(counts)

    def _vision_macs(self, counts: TokenCounts) -> tuple[int, int]:
        """(vision tower, projector) multiply-adds for one image, traced once."""
        vcfg = self.model.config.vision_config
        param = next(self.model.parameters())
        pixels = torch.zeros(1, 3, vcfg.image_size, vcfg.image_size, dtype=param.dtype, device=param.device)
        tower = self.meter.counter.count(("vision", vcfg.image_size), self.model.model.vision_tower, (pixels,))
        feats = torch.zeros(1, counts.num_visual, vcfg.hidden_size, dtype=param.dtype, device=param.device)
        proj = self.meter.counter.count(("projector", counts.num_visual), self.model.model.multi_modal_projector, (feats,))
        return tower, proj

    def chat_prompt(self, user_text: str) -> str:
        """The full prompt for one user turn with one image, by the model's chat template."""
        if getattr(self.processor, "chat_template", None):
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
            return str(self.processor.apply_chat_template(conv, add_generation_prompt=True))
        return DEFAULT_PROMPT.format(question=user_text)

    @torch.no_grad()
    def generate(
        self,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        strategy: Strategy,
        budget: Budget,
        *,
        seed: int = 0,
        max_new_tokens: int = 8,
    ) -> list[GenerationResult]:
        texts = [self.chat_prompt(p) for p in prompts]
        images = [s.load_image() for s in samples]
        enc = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        ids = enc["input_ids"].to(self.device)
        attn = enc["attention_mask"].to(self.device).bool()
        pixels = enc["pixel_values"].to(self.device, torch_dtype(self.dtype))
        stages = strategy.schedule(self.info)
        want_sal = any("saliency" in s.signals for s in stages)
        mark_phase("vision_start")  # timed loop only: time to first token starts here
        img = self.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=want_sal or None,
            return_dict=True,
        )
        feats = torch.stack(list(img.pooler_output))  # [B, N, d]
        batch, n_vis, dim = feats.shape
        saliency = self._cls_saliency(img.hidden_states) if want_sal else None
        is_img = ids == self.image_token_id
        embeds = self.parts.embed(ids)
        embeds[is_img] = feats.reshape(-1, dim).to(embeds.dtype)
        origin = torch.full_like(ids, -1)
        origin[is_img] = torch.arange(n_vis, device=ids.device).repeat(batch)
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
        layout = TokenLayout(embeds, pos[..., None], attn, origin)
        side = math.isqrt(n_vis)
        grid = (side, side) if side * side == n_vis else (1, n_vis)
        setups = []
        for b, s in enumerate(samples):
            text_rows = attn[b] & ~is_img[b]
            setups.append(
                SampleSetup(
                    sample_id=s.id,
                    budget=budget.resolve(n_vis, strategy.default_keep),
                    num_visual=n_vis,
                    grid=grid,
                    generator=sample_generator(seed, s.id, strategy.name),
                    saliency=None if saliency is None else saliency[b],
                    text_embeddings=embeds[b, text_rows],
                )
            )
        tok = self.processor.tokenizer
        out = prefill_and_decode(
            self.parts, layout, setups, strategy, stages,
            max_new_tokens=max_new_tokens, eos_ids=self.eos_ids, stop=make_stop(tok),
        )
        results = []
        top2 = out.first_logits.topk(2, dim=-1).values
        for b in range(batch):
            results.append(
                GenerationResult(
                    prediction=tok.decode(out.tokens[b], skip_special_tokens=True).strip(),
                    prompt=texts[b],
                    num_visual=n_vis,
                    grid=grid,
                    budget=setups[b].budget,
                    tokens_per_layer=out.tokens_per_layer[b],
                    kept=out.kept[b],
                    merged=out.merged[b],
                    answer_margin=float(top2[b, 0] - top2[b, 1]),
                    selection_seconds=out.selection_seconds[b],
                    text_tokens=int((attn[b] & ~is_img[b]).sum()),
                )
            )
        return results

    def _cls_saliency(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[B, N]: the [CLS] row of the feature layer's attention, head-averaged, [CLS] column dropped."""
        tower = self.model.model.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        f = self.feature_layer if isinstance(self.feature_layer, int) else self.feature_layer[-1]
        f = f % len(hidden_states)  # hidden_states[f] is the output of layer f-1
        layer = layers[f - 1]
        x = layer.layer_norm1(hidden_states[f - 1])
        att = layer.self_attn
        b, s, _ = x.shape
        q = att.q_proj(x[:, :1]).view(b, 1, att.num_heads, att.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(b, s, att.num_heads, att.head_dim).transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)).float() * att.scale).softmax(dim=-1)  # [B, H, 1, S]
        sal = probs.mean(dim=1)[:, 0, 1:]
        return sal if self.select_strategy == "default" else torch.cat([probs.mean(dim=1)[:, 0, :1], sal], dim=1)


def _dynamic_cache(text_config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=text_config)
