"""The adapter contract: how the harness drives a model with a strategy.

An adapter wraps a stock Hugging Face model. For a batch of samples it builds the
prompts with the model's own processor, runs the forward pass, calls the strategy at
each scheduled stage, applies the selections (keeping original position ids), and
generates greedily from the pruned cache. It reports, per sample, what was measured
inside the forward pass (visual tokens entering every decoder layer), not what the
strategy claimed.

:class:`Adapter` is the whole contract: every method the harness, the timed loop,
``tokenbench show`` and the contract suite call is an abstract method here (except
:meth:`Adapter.visual_token_capacity`, whose default, "unknown", is always correct).
FLOPs are counted from :class:`TokenCounts`, the counts every stored record keeps,
so a stored run is measured again without re-running the model.

A decoder-only model whose language model is a stack of stock ``transformers``
decoder layers need not implement the contract by hand: subclass
:class:`tokenbench.DecoderAdapter`, which implements ``generate`` and FLOPs on top of
:func:`tokenbench.prefill_and_decode` and leaves only the model-specific parts
(loading, image encoding, the decoder view, vision FLOPs). docs/plugins.md is the
guide.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tokenbench.segments import Segment, single_segment
from tokenbench.strategy import ModelInfo, Strategy

if TYPE_CHECKING:
    from tokenbench.budget import Budget
    from tokenbench.flops import MacCounter
    from tokenbench.task import Sample


@dataclass(frozen=True)
class TokenCounts:
    """The token counts of one sample's forward pass: everything its FLOPs depend on.

    >>> TokenCounts.from_record({"num_visual": 16, "grid": [4, 4], "text_tokens": 9, "tokens_per_layer": [4, 4, 2]})
    TokenCounts(num_visual=16, grid=(4, 4), text_tokens=9, tokens_per_layer=(4, 4, 2), vision_inputs=())
    """

    #: visual tokens the image was encoded into, before any stage
    num_visual: int
    #: the visual token grid (rows, columns) of the image
    grid: tuple[int, int]
    #: text (non-visual) tokens of the prompt, which no strategy drops
    text_tokens: int
    #: visual tokens entering each decoder layer, measured in the forward pass
    tokens_per_layer: tuple[int, ...]
    #: what the vision encoder ran on, one tuple of integers per input in the adapter's
    #: own terms (e.g. ``(tiles, height, width)``); empty: one image giving ``grid``
    vision_inputs: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TokenCounts:
        """The counts a stored per-sample record keeps (the harness writes these keys)."""
        rows, cols = record["grid"]
        inputs = tuple(tuple(int(v) for v in shape) for shape in record.get("vision_inputs") or ())
        return cls(int(record["num_visual"]), (int(rows), int(cols)), int(record["text_tokens"]), tuple(int(n) for n in record["tokens_per_layer"]), inputs)


@dataclass
class GenerationResult:
    """What one sample produced under one strategy."""

    prediction: str
    prompt: str
    num_visual: int
    grid: tuple[int, int]
    budget: int
    #: visual tokens entering each decoder layer, measured in the forward pass
    tokens_per_layer: list[int]
    #: stage label -> original indices of the visual tokens kept at that stage, unmerged
    #: ones only (a merged token carries a donor's index; see ``kept_merged``)
    kept: dict[str, list[int]] = field(default_factory=dict)
    #: stage label -> number of merged (extra) tokens created at that stage
    merged: dict[str, int] = field(default_factory=dict)
    #: top-1 minus top-2 logit of the first generated token (near-tie detection)
    answer_margin: float = float("nan")
    #: wall-clock seconds spent inside the strategy's select() calls
    selection_seconds: float = 0.0
    #: text (non-visual) tokens of the prompt, which no strategy drops
    text_tokens: int = 0
    #: stage label -> merged tokens made at an earlier stage that this stage kept (not in ``kept``)
    kept_merged: dict[str, int] = field(default_factory=dict)
    #: the parts the visual tokens come in (images, crops, tiles, frames); empty: one image of ``grid``
    segments: tuple[Segment, ...] = ()
    #: stage label -> visual tokens in each segment after that stage
    segment_counts: dict[str, list[int]] = field(default_factory=dict)
    #: what the vision encoder ran on (:attr:`TokenCounts.vision_inputs`)
    vision_inputs: tuple[tuple[int, ...], ...] = ()

    @property
    def all_segments(self) -> tuple[Segment, ...]:
        """``segments``, or the one image of ``grid``."""
        return self.segments or single_segment(self.grid)

    @property
    def tokens_into_llm(self) -> int:
        return self.tokens_per_layer[0] if self.tokens_per_layer else self.num_visual

    @property
    def layer_average(self) -> float:
        return sum(self.tokens_per_layer) / len(self.tokens_per_layer) if self.tokens_per_layer else float(self.num_visual)

    @property
    def counts(self) -> TokenCounts:
        """The token counts its FLOPs depend on."""
        return TokenCounts(self.num_visual, (self.grid[0], self.grid[1]), self.text_tokens, tuple(self.tokens_per_layer), self.vision_inputs)


class Adapter(ABC):
    """Base class of model adapters: the contract the harness drives.

    A subclass sets the class attributes ``name``, ``description``, ``family`` (the
    prompt-template family that :meth:`tokenbench.Task.prompt` is given, e.g.
    ``"llava"``) and ``model_types`` (the ``config.json`` ``model_type`` values it
    serves); its constructor sets ``info``, the :class:`~tokenbench.ModelInfo` that
    strategies schedule their stages on; and it implements every abstract method.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    #: what strategies see of the model (decoder layers, hidden size, name); set by the constructor
    info: ModelInfo

    @classmethod
    @abstractmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> Adapter:
        """The adapter for checkpoint ``model`` (a local path or a hub id) on ``device`` in ``dtype``.

        ``options`` are the ``--model-option KEY=VALUE`` pairs (values arrive as
        strings). A checkpoint that cannot be loaded raises
        :class:`~tokenbench.ModelLoadError` with a one-line message saying how to fix it.
        """

    @classmethod
    def visual_token_capacity(cls, config: dict[str, Any]) -> int | None:
        """Visual tokens per image from a ``config.json`` dict (``None`` if image-dependent).

        Optional: budgets given as counts are checked against it before the model loads.
        """
        return None

    @abstractmethod
    def chat_prompt(self, user_text: str) -> str:
        """The full prompt the model sees for one user turn with one image.

        The harness records ``chat_prompt("{question}")`` as the run's prompt template
        (part of the run's key in the store), so it must not depend on anything else.
        """

    @abstractmethod
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
        """Greedy generation under ``strategy``; one result per sample, in order.

        Generation ends at the model's EOS, after ``max_new_tokens``, or once the new text
        contains one of ``stop_strings`` (the task's :attr:`~tokenbench.Task.stop_strings`).

        ``prompts`` are the task's user texts (wrap them with :meth:`chat_prompt`).
        A strategy that raises or breaks the contract for one sample raises
        :class:`~tokenbench.StrategyFailure` with that sample's index in the batch, so
        that the harness records it alone and reruns the others.

        Timing (``tokenbench.timing``): an adapter built on
        :func:`tokenbench.prefill_and_decode` is timed phase by phase with no further
        code (that function marks prefill, selection, first token and decode steps, and
        forces the number of new tokens while a timed call is active); it should call
        :func:`tokenbench.mark_phase` ``("vision_start")`` just before its vision
        encoder, so that time to first token leaves preprocessing out. Other adapters
        are timed as a whole call.
        """

    @abstractmethod
    def flops_for(self, counts: TokenCounts) -> dict[str, int] | None:
        """FLOPs (2 × multiply-adds) of a forward pass with these token counts.

        Keys ``vision``, ``projector``, ``llm_prefill``, ``decode_per_token``,
        ``total_prefill``; ``None`` if the adapter cannot count them. The harness calls
        it with :meth:`TokenCounts.from_record` on stored records, so it must depend on
        the counts alone.
        """

    def flops(self, result: GenerationResult) -> dict[str, int] | None:
        """FLOPs of the forward that produced ``result``: :meth:`flops_for` of its counts."""
        return self.flops_for(result.counts)

    def flops_cache(self) -> MacCounter | None:
        """The :class:`~tokenbench.MacCounter` behind :meth:`flops_for`, if any (default: none).

        ``tokenbench compare`` keeps its totals in the store, per model
        (:meth:`~tokenbench.MacCounter.export`), and preloads them in the next run, so a
        repeated or resumed comparison never traces a shape twice.
        """
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Model identity and runtime settings recorded with every result.

        Part of every run's key in the store: include what changes the results (weights
        hash or revision, dtype, device, attention kernel, processor options) and
        nothing that varies between identical runs.
        """
