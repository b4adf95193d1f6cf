"""The adapter contract: how the harness drives a model with a strategy.

An adapter wraps a stock Hugging Face model. For a batch of samples it builds the
prompts with the model's own processor, runs the forward pass, calls the strategy at
each scheduled stage, applies the selections (keeping original position ids), and
generates greedily from the pruned cache. It reports, per sample, what was measured
inside the forward pass (visual tokens entering every decoder layer), not what the
strategy claimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from tokenbench.errors import ModelLoadError
from tokenbench.strategy import ModelInfo, Strategy

if TYPE_CHECKING:
    from tokenbench.budget import Budget
    from tokenbench.task import Sample


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
    #: stage label -> original indices of the visual tokens kept at that stage
    kept: dict[str, list[int]] = field(default_factory=dict)
    #: stage label -> number of merged (extra) tokens created at that stage
    merged: dict[str, int] = field(default_factory=dict)
    #: top-1 minus top-2 logit of the first generated token (near-tie detection)
    answer_margin: float = float("nan")
    #: wall-clock seconds spent inside the strategy's select() calls
    selection_seconds: float = 0.0
    #: text (non-visual) tokens of the prompt, which no strategy drops
    text_tokens: int = 0

    @property
    def tokens_into_llm(self) -> int:
        return self.tokens_per_layer[0] if self.tokens_per_layer else self.num_visual

    @property
    def layer_average(self) -> float:
        return sum(self.tokens_per_layer) / len(self.tokens_per_layer) if self.tokens_per_layer else float(self.num_visual)


class Adapter:
    """Base class of model adapters.

    Subclasses set ``name``, ``description``, ``family`` (the prompt-template family,
    e.g. ``"llava"``) and ``model_types`` (the ``config.json`` ``model_type`` values
    they serve), and implement :meth:`load` and :meth:`generate`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    info: ModelInfo

    @classmethod
    def load(cls, model: str, *, device: str = "cpu", dtype: str = "float32", **options: Any) -> Adapter:
        raise NotImplementedError

    @classmethod
    def visual_token_capacity(cls, config: dict[str, Any]) -> int | None:
        """Visual tokens per image from a ``config.json`` dict (``None`` if image-dependent)."""
        return None

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
        """Greedy generation under ``strategy``; one result per sample.

        Timing (``tokenbench.timing``): an adapter built on
        :func:`tokenbench.decoding.prefill_and_decode` is timed phase by phase
        with no further code (that function marks prefill, selection, first token and
        decode steps, and forces the number of new tokens while a timed call is active);
        it should call ``tokenbench.timing.mark_phase("vision_start")`` just before its
        vision encoder, so that time to first token leaves preprocessing out. Other
        adapters are timed as a whole call.
        """
        raise NotImplementedError

    def flops(self, result: GenerationResult) -> dict[str, int] | None:
        """FLOPs (2 × multiply-adds) of the forward that produced ``result``: keys ``vision``,
        ``projector``, ``llm_prefill``, ``decode_per_token``, ``total_prefill``; ``None`` if unknown."""
        return None

    def describe(self) -> dict[str, Any]:
        """Model identity and runtime settings recorded with every result."""
        raise NotImplementedError
