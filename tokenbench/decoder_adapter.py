"""The adapter contract implemented once for decoder-only vision-language models.

:class:`DecoderAdapter` is an :class:`~tokenbench.Adapter` for a stock
``transformers`` model whose language model is a stack of decoder layers fed with
input embeddings (LLaVA, Qwen2.5-VL, and most VLMs since). It does everything that
does not depend on the model:

- construction: eval mode, the :class:`~tokenbench.ModelInfo` strategies schedule on,
  the :class:`~tokenbench.DecoderParts` view, a :class:`~tokenbench.FlopsMeter`, left
  padding, the EOS ids;
- :meth:`~DecoderAdapter.chat_prompt` by the processor's chat template;
- :meth:`~DecoderAdapter.run`: the prompts, the processor call, the strategy's
  schedule, the per-sample :class:`~tokenbench.SampleSetup` (budget resolved on each
  sample's own token count, seeded generator, saliency, text embeddings), and
  :func:`~tokenbench.prefill_and_decode`;
- :meth:`~DecoderAdapter.generate`: one :class:`~tokenbench.GenerationResult` per
  sample (decoded prediction, measured token counts, answer margin);
- :meth:`~DecoderAdapter.flops_for` and :meth:`~DecoderAdapter.describe`.

A subclass says only what is model-specific: how to load the checkpoint
(:meth:`~tokenbench.Adapter.load`), its decoder view (:meth:`decoder_parts`), how a
processed batch becomes a :class:`~tokenbench.TokenLayout` with each sample's token
grid and saliency (:meth:`encode`), and the FLOPs of its vision encoder and projector
(:meth:`vision_macs`). docs/plugins.md walks through one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from tokenbench.adapter import Adapter, GenerationResult, TokenCounts
from tokenbench.budget import Budget, sample_generator
from tokenbench.checkpoints import model_identity
from tokenbench.decoding import ApplyRopeFn, DecodeOutput, DecoderParts, SampleSetup, TokenLayout, eos_token_ids, make_stop, prefill_and_decode
from tokenbench.errors import PluginError
from tokenbench.flops import MacCounter
from tokenbench.flops_meter import FlopsMeter
from tokenbench.strategy import ModelInfo, Strategy
from tokenbench.task import Sample


@dataclass
class EncodedBatch:
    """What :meth:`DecoderAdapter.encode` makes of one processed batch.

    ``layout``: the left-padded prompt embeddings with every sample's visual tokens in
    place, their original position ids, and ``origin`` numbering each sample's visual
    tokens from 0 (:meth:`DecoderAdapter.visual_layout` builds it). ``grids``: each
    sample's visual token grid (rows, columns), row-major over its visual tokens.
    ``saliency``: each sample's encoder saliency over its visual tokens (``[N_b]``),
    or ``None`` when it was not asked for.

    Each sample has one image, whose visual tokens are one contiguous run of its
    sequence.
    """

    layout: TokenLayout
    grids: list[tuple[int, int]]
    saliency: Sequence[torch.Tensor] | None = None


class DecodeRun(NamedTuple):
    """One reduced forward pass and greedy decode, before results are assembled."""

    output: DecodeOutput
    #: the full prompts (:meth:`DecoderAdapter.chat_prompt` of the user texts)
    prompts: list[str]
    setups: list[SampleSetup]
    #: text (non-visual) tokens of each prompt
    text_tokens: list[int]


class DecoderAdapter(Adapter):
    """An adapter for a stock decoder-only VLM; subclasses implement the model-specific hooks.

    The constructor takes the loaded model and processor, the ``source`` it was loaded
    from (path or hub id), and the device and dtype names; a subclass that keeps
    model-specific settings sets them *before* calling ``super().__init__``, which
    calls :meth:`decoder_parts`. The language model's config is ``model.config.text_config``.
    """

    #: the prompt when the processor has no chat template (``{question}`` is the user
    #: text); ``None``: the chat template is always applied
    default_prompt: ClassVar[str | None] = None

    def __init__(self, model: Any, processor: Any, source: str, device: str, dtype: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.device = device
        self.dtype = dtype
        self.text_config = model.config.text_config
        self.info = ModelInfo(num_layers=self.text_config.num_hidden_layers, hidden_size=self.text_config.hidden_size, name=source)
        self.parts = self.decoder_parts()
        self.meter = FlopsMeter(self.parts, self.text_config, self.vision_macs)
        self.tokenizer.padding_side = "left"
        self.eos_ids = eos_token_ids(model, self.tokenizer)

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (prompts, decoding, stop strings)."""
        return self.processor.tokenizer

    # -- the model-specific hooks -----------------------------------------------------
    @abstractmethod
    def decoder_parts(self) -> DecoderParts:
        """The :class:`~tokenbench.DecoderParts` view of the stock language model.

        Called once by the constructor. For a stock RoPE decoder, :meth:`stock_decoder_parts`
        builds it from the modeling module's ``apply_rotary_pos_emb``.
        """

    @abstractmethod
    def encode(self, inputs: Mapping[str, Any], *, saliency: bool) -> EncodedBatch:
        """The batch's :class:`EncodedBatch` from the processor's output ``inputs``.

        Move the tensors to ``self.device``, call :func:`tokenbench.mark_phase`
        ``("vision_start")`` just before the vision encoder, encode the images, and write
        their visual tokens into the prompt embeddings (:meth:`visual_layout`).
        ``saliency``: a scheduled stage asked for the encoder saliency; compute it only
        then (``None`` in the result otherwise).
        """

    @abstractmethod
    def vision_macs(self, counts: TokenCounts) -> tuple[int, int]:
        """(vision encoder, projector) multiply-adds for one image with these counts.

        Trace the stock modules once per input shape with ``self.meter.count(key, ...)``;
        the rest of the FLOPs (decoder layers, LM head, decode) :class:`~tokenbench.FlopsMeter` counts.
        """

    # -- helpers for the hooks ----------------------------------------------------------
    def stock_decoder_parts(self, apply_rotary_pos_emb: ApplyRopeFn, *, position_dims: int = 1) -> DecoderParts:
        """The view of a stock RoPE decoder at ``model.model.language_model``, with ``model.lm_head``.

        ``apply_rotary_pos_emb(q, k, cos, sin)`` is the function of the language model's
        own modeling module. ``position_dims`` 1: 1-D RoPE (Llama, Mistral, Qwen2, ...),
        the layers take position ids ``[B, S]``; 3: M-RoPE (Qwen2-VL, Qwen2.5-VL), they
        take ``[3, B, S]`` and the model's rotary embedding combines the axes. The KV
        cache is a ``DynamicCache`` of the text config.
        """
        if position_dims not in (1, 3):
            raise PluginError(f"{type(self).__name__}: stock decoders have 1-D or 3-D (M-RoPE) positions, not {position_dims}-D")
        lm, text = self.model.model.language_model, self.text_config
        position_ids = _first_axis if position_dims == 1 else _axes_first
        return DecoderParts(
            embed=lm.embed_tokens,
            layers=list(lm.layers),
            norm=lm.norm,
            lm_head=self.model.lm_head,
            rotary=lambda h, pos: lm.rotary_emb(h, position_ids(pos)),
            apply_rope=lambda x, cos, sin: apply_rotary_pos_emb(x, x, cos, sin)[0],
            position_ids=position_ids,
            make_cache=lambda: _dynamic_cache(text),
            position_dims=position_dims,
            attention=getattr(text, "_attn_implementation", None) or "sdpa",
        )

    def visual_layout(
        self, input_ids: torch.Tensor, valid: torch.Tensor, visual: torch.Tensor, features: Sequence[torch.Tensor], pos: torch.Tensor
    ) -> TokenLayout:
        """The prompt's :class:`~tokenbench.TokenLayout` with the visual tokens in place.

        ``input_ids`` and ``valid`` ``[B, S]`` are the processor's (left-padded),
        ``visual`` ``[B, S]`` marks the image placeholders, ``features[b]`` ``[N_b, d]`` are
        sample ``b``'s visual tokens in the order the language model sees them, and
        ``pos`` ``[B, S, P]`` the original position ids (:meth:`sequential_positions`
        for 1-D RoPE).
        """
        counts = [int(f.shape[0]) for f in features]
        placeholders = visual.sum(dim=1).tolist()
        if placeholders != counts:
            raise PluginError(f"{type(self).__name__}: the prompts hold {placeholders} image placeholders but the images gave {counts} visual tokens")
        embeds = self.parts.embed(input_ids)
        embeds[visual] = torch.cat(list(features)).to(embeds.dtype)
        origin = torch.full_like(input_ids, -1)
        origin[visual] = torch.cat([torch.arange(n, device=input_ids.device) for n in counts])
        return TokenLayout(embeds, pos, valid, origin)

    @staticmethod
    def sequential_positions(valid: torch.Tensor) -> torch.Tensor:
        """``[B, S, 1]`` 1-D position ids of a left-padded batch: 0, 1, ... over each sample's valid tokens."""
        return (valid.long().cumsum(-1) - 1).clamp(min=0)[..., None]

    # -- the contract, implemented --------------------------------------------------------
    def chat_prompt(self, user_text: str) -> str:
        """The full prompt for one user turn with one image, by the processor's chat template."""
        if self.default_prompt is not None and not getattr(self.processor, "chat_template", None):
            return self.default_prompt.format(question=user_text)
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
        return str(self.processor.apply_chat_template(conv, add_generation_prompt=True))

    def describe(self) -> dict[str, Any]:
        """:func:`~tokenbench.model_identity` with the prompt family; extend it with the processor options that change results."""
        return model_identity(self.model, self.source, self.device, self.dtype, family=self.family)

    def flops_for(self, counts: TokenCounts) -> dict[str, int]:
        """The decoder's FLOPs at the measured sequence lengths (:class:`~tokenbench.FlopsMeter`) plus :meth:`vision_macs`."""
        return self.meter.measure(counts)

    def flops_cache(self) -> MacCounter:
        """The meter's traces: decoder layers by sequence length, and what :meth:`vision_macs` counted."""
        return self.meter.counter

    @torch.no_grad()
    def run(
        self,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        strategy: Strategy,
        budget: Budget,
        *,
        seed: int = 0,
        max_new_tokens: int = 8,
        stop_strings: Sequence[str] = (),
    ) -> DecodeRun:
        """The reduced forward pass and greedy decode; generation ends at EOS or at any of ``stop_strings``."""
        texts = [self.chat_prompt(p) for p in prompts]
        inputs = self.processor(images=[s.load_image() for s in samples], text=texts, return_tensors="pt", padding=True)
        stages = strategy.schedule(self.info)
        encoded = self.encode(inputs, saliency=any("saliency" in s.signals for s in stages))
        layout = encoded.layout
        if layout.hidden.shape[0] != len(samples) or len(encoded.grids) != len(samples):
            raise PluginError(f"{type(self).__name__}.encode returned {layout.hidden.shape[0]} rows and {len(encoded.grids)} grids for {len(samples)} samples")
        counts = layout.visual_counts()
        text_rows = layout.valid & ~layout.visual
        setups = [
            SampleSetup(
                sample_id=s.id,
                budget=budget.resolve(counts[b], strategy.default_keep),
                num_visual=counts[b],
                grid=encoded.grids[b],
                generator=sample_generator(seed, s.id, strategy.name),
                saliency=None if encoded.saliency is None else encoded.saliency[b],
                text_embeddings=layout.hidden[b, text_rows[b]],
            )
            for b, s in enumerate(samples)
        ]
        out = prefill_and_decode(
            self.parts,
            layout,
            setups,
            strategy,
            stages,
            max_new_tokens=max_new_tokens,
            eos_ids=self.eos_ids,
            stop=make_stop(self.tokenizer, tuple(stop_strings)) if stop_strings else None,
        )
        return DecodeRun(out, texts, setups, text_rows.sum(dim=1).tolist())

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
        stop_strings: Sequence[str] = (),
    ) -> list[GenerationResult]:
        run = self.run(samples, prompts, strategy, budget, seed=seed, max_new_tokens=max_new_tokens, stop_strings=stop_strings)
        out = run.output
        top2 = out.first_logits.topk(2, dim=-1).values
        return [
            GenerationResult(
                prediction=self.tokenizer.decode(out.tokens[b], skip_special_tokens=True).strip(),
                prompt=run.prompts[b],
                num_visual=s.num_visual,
                grid=s.grid,
                budget=s.budget,
                tokens_per_layer=out.tokens_per_layer[b],
                kept=out.kept[b],
                merged=out.merged[b],
                kept_merged=out.kept_merged[b] if out.kept_merged else {},
                answer_margin=float(top2[b, 0] - top2[b, 1]),
                selection_seconds=out.selection_seconds[b],
                text_tokens=run.text_tokens[b],
            )
            for b, s in enumerate(run.setups)
        ]


def _first_axis(pos: torch.Tensor) -> torch.Tensor:
    """``[B, S, 1]`` positions -> the ``[B, S]`` position ids of a 1-D RoPE decoder."""
    return pos[..., 0]


def _axes_first(pos: torch.Tensor) -> torch.Tensor:
    """``[B, S, 3]`` positions -> the ``[3, B, S]`` position ids of an M-RoPE decoder."""
    return pos.permute(2, 0, 1)


def _dynamic_cache(text_config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=text_config)
