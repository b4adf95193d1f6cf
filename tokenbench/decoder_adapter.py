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
from tokenbench.decoding import ApplyRopeFn, DecodeOutput, DecoderParts, SampleSetup, eos_token_ids, make_stop, prefill_and_decode
from tokenbench.errors import PluginError, TaskDataError
from tokenbench.flops import MacCounter
from tokenbench.flops_meter import FlopsMeter
from tokenbench.processors import video_unavailable
from tokenbench.segments import Segment, check_segments
from tokenbench.strategy import ModelInfo, Strategy
from tokenbench.task import Sample
from tokenbench.token_layout import SEPARATOR, TokenLayout


@dataclass
class EncodedBatch:
    """What :meth:`DecoderAdapter.encode` makes of one processed batch.

    ``layout``: the left-padded prompt embeddings with every sample's visual tokens in
    place, their original position ids, and ``origin`` numbering each sample's visual
    tokens from 0 (:meth:`DecoderAdapter.visual_layout` builds it). ``grids``: each
    sample's visual token grid (rows, columns), row-major over its visual tokens.
    ``saliency``: each sample's encoder saliency over its visual tokens (``[N_b]``),
    or ``None`` when it was not asked for.

    A sample with several images, crops, tiles or frames gives its ``segments`` (each
    sample's :class:`~tokenbench.Segment` tuple, tiling its visual tokens in order; its
    grid is then ``(1, N_b)``); ``None``: every sample is one image of its grid.
    ``vision_inputs``: per sample, what the vision encoder ran on, in the adapter's own
    terms (:attr:`~tokenbench.TokenCounts.vision_inputs`, what :meth:`DecoderAdapter.vision_macs` reads).
    """

    layout: TokenLayout
    grids: list[tuple[int, int]]
    saliency: Sequence[torch.Tensor] | None = None
    segments: Sequence[tuple[Segment, ...]] | None = None
    vision_inputs: Sequence[tuple[tuple[int, ...], ...]] | None = None


class DecodeRun(NamedTuple):
    """One reduced forward pass and greedy decode, before results are assembled."""

    output: DecodeOutput
    #: the full prompts (:meth:`DecoderAdapter.chat_prompt` of the user texts)
    prompts: list[str]
    setups: list[SampleSetup]
    #: text and separator (non-visual) tokens of each prompt
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
    #: whether a sample may hold a video (its frames go to the processor as ``videos``)
    takes_video: ClassVar[bool] = False
    #: frames sampled from a video file: at ``video_fps`` frames per second, at most ``video_frames``
    video_fps: ClassVar[float | None] = 1.0
    video_frames: ClassVar[int] = 16

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
        self,
        input_ids: torch.Tensor,
        valid: torch.Tensor,
        visual: torch.Tensor,
        features: Sequence[torch.Tensor],
        pos: torch.Tensor,
        separators: Sequence[torch.Tensor] | None = None,
    ) -> TokenLayout:
        """The prompt's :class:`~tokenbench.TokenLayout` with the visual tokens in place.

        ``input_ids`` and ``valid`` ``[B, S]`` are the processor's (left-padded),
        ``visual`` ``[B, S]`` marks the image placeholders, ``features[b]`` ``[N_b, d]`` are
        the rows the stock model writes into sample ``b``'s placeholders, in order, and
        ``pos`` ``[B, S, P]`` the original position ids (:meth:`sequential_positions`
        for 1-D RoPE). ``separators[b]`` ``[N_b]`` (bool) marks the rows that are
        separators (``image_newline``): they stay in place and no strategy sees them;
        the other rows are the visual tokens, numbered 0, 1, ... in order.
        """
        rows = [int(f.shape[0]) for f in features]
        placeholders = visual.sum(dim=1).tolist()
        if placeholders != rows:
            raise PluginError(f"{type(self).__name__}: the prompts hold {placeholders} image placeholders but the images gave {rows} visual tokens")
        embeds = self.parts.embed(input_ids)
        embeds[visual] = torch.cat(list(features)).to(embeds.dtype)
        origin = torch.full_like(input_ids, -1)
        numbers = []
        for b, n in enumerate(rows):
            sep = separators[b].to(input_ids.device).bool() if separators is not None else torch.zeros(n, dtype=torch.bool, device=input_ids.device)
            num = torch.full((n,), SEPARATOR, dtype=torch.long, device=input_ids.device)
            num[~sep] = torch.arange(int((~sep).sum()), device=input_ids.device)
            numbers.append(num)
        origin[visual] = torch.cat(numbers)
        return TokenLayout(embeds, pos, valid, origin)

    @staticmethod
    def sequential_positions(valid: torch.Tensor) -> torch.Tensor:
        """``[B, S, 1]`` 1-D position ids of a left-padded batch: 0, 1, ... over each sample's valid tokens."""
        return (valid.long().cumsum(-1) - 1).clamp(min=0)[..., None]

    # -- the contract, implemented --------------------------------------------------------
    def chat_prompt(self, user_text: str, *, images: int = 1, video: bool = False) -> str:
        """The full prompt for one user turn with ``images`` images (and a video), by the processor's chat template.

        The images come first, then the video, then the text, as in the models' own
        multi-image examples.
        """
        if self.default_prompt is not None and not getattr(self.processor, "chat_template", None):
            if images != 1 or video:
                raise TaskDataError(
                    f"{self.source} has no chat template and the {self.name} adapter's default prompt takes one image, not {images} images{' and a video' if video else ''}"
                )
            return self.default_prompt.format(question=user_text)
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
        if video:
            content.append({"type": "video"})
        conv = [{"role": "user", "content": [*content, {"type": "text", "text": user_text}]}]
        return str(self.processor.apply_chat_template(conv, add_generation_prompt=True))

    def visual_inputs(self, samples: Sequence[Sample]) -> tuple[list[list[Any]], list[list[Any]]]:
        """Each sample's images and video frames (PIL), checked against what the model takes.

        A sample with a video the adapter does not take (or that its processor cannot
        take) raises :class:`~tokenbench.TaskDataError` naming it: the harness records
        that sample alone and the run goes on.
        """
        images, videos = [], []
        for s in samples:
            if s.has_video and not self.takes_video:
                raise TaskDataError(f"sample {s.id}: holds a video, which the {self.name} adapter does not take")
            if s.has_video and video_unavailable(self.processor):
                raise TaskDataError(f"sample {s.id}: {video_unavailable(self.processor)}")
            images.append(s.load_images())
            videos.append(s.load_video(num_frames=self.video_frames, fps=self.video_fps) if s.has_video else [])
        return images, videos

    def processor_inputs(self, images: Sequence[Sequence[Any]], videos: Sequence[Sequence[Any]], texts: Sequence[str]) -> Mapping[str, Any]:
        """The processor's output for a batch (the images of all samples in one flat list, in order)."""
        kwargs: dict[str, Any] = {"images": [im for ims in images for im in ims] or None}
        if any(videos):
            kwargs["videos"] = [list(v) for v in videos if v]
        return self.processor(text=list(texts), return_tensors="pt", padding=True, **kwargs)

    def describe(self) -> dict[str, Any]:
        """:func:`~tokenbench.model_identity` with the prompt family (and, for a model that takes video, the frame sampling); extend it with the processor options that change results."""
        video = {"video_fps": self.video_fps, "video_frames": self.video_frames} if self.takes_video else {}
        return model_identity(self.model, self.source, self.device, self.dtype, family=self.family, **video)

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
        images, videos = self.visual_inputs(samples)
        texts = [self.chat_prompt(p, images=len(i), video=bool(v)) for p, i, v in zip(prompts, images, videos)]
        inputs = self.processor_inputs(images, videos, texts)
        stages = strategy.schedule(self.info)
        encoded = self.encode(inputs, saliency=any("saliency" in s.signals for s in stages))
        layout = encoded.layout
        if layout.hidden.shape[0] != len(samples) or len(encoded.grids) != len(samples):
            raise PluginError(f"{type(self).__name__}.encode returned {layout.hidden.shape[0]} rows and {len(encoded.grids)} grids for {len(samples)} samples")
        counts = layout.visual_counts()
        text_rows = layout.valid & layout.text
        segments = [tuple(encoded.segments[b]) if encoded.segments is not None else () for b in range(len(samples))]
        for b, segs in enumerate(segments):
            try:
                if segs:
                    check_segments(segs, counts[b])
            except ValueError as exc:
                raise PluginError(f"{type(self).__name__}.encode, sample {samples[b].id}: {exc}") from None
        setups = [
            SampleSetup(
                sample_id=s.id,
                budget=budget.resolve(counts[b], strategy.default_keep),
                num_visual=counts[b],
                grid=encoded.grids[b] if len(segments[b]) <= 1 else (1, counts[b]),
                generator=sample_generator(seed, s.id, strategy.name),
                saliency=None if encoded.saliency is None else encoded.saliency[b],
                text_embeddings=layout.hidden[b, text_rows[b]],
                segments=segments[b],
                vision_inputs=tuple(encoded.vision_inputs[b]) if encoded.vision_inputs is not None else (),
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
        return DecodeRun(out, texts, setups, (layout.valid & ~layout.visual).sum(dim=1).tolist())

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
                segments=s.segments,
                segment_counts=out.segment_counts[b] if out.segment_counts else {},
                vision_inputs=s.vision_inputs,
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
