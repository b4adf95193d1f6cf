"""The one contract between a reduction strategy and a model adapter.

A strategy declares a *schedule* (the stages it acts at and the signals it needs
there); the adapter owns the forward pass, builds a :class:`StageContext` at each
scheduled stage with only the requested signals, calls :meth:`Strategy.select`, and
applies the returned :class:`Selection`.

Strategies never see the model class: everything they may use is on the context.

Example: a strategy that keeps the first ``budget`` visual tokens.

>>> import torch
>>> class KeepFirst(Strategy):
...     name = "keep-first"
...     description = "Keeps the first b visual tokens (a toy)."
...     def schedule(self, model):
...         return (StageSpec.vision(),)
...     def select(self, ctx):
...         return Selection(keep=torch.arange(ctx.budget))
>>> ctx = StageContext.for_testing(num_visual=16, budget=4)
>>> KeepFirst().select(ctx).keep.tolist()
[0, 1, 2, 3]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from tokenbench.errors import PluginError, SelectionError, UsageError
from tokenbench.segments import Segment, check_segments, segment_of, single_segment
from tokenbench.strategy_params import coerce_param, strategy_label

if TYPE_CHECKING:  # torch is imported lazily so that listing plugins stays torch-free
    import torch

StageKind = Literal["vision", "llm"]
Signal = Literal["saliency", "text_embeddings", "attention", "hidden_states"]
Query = Literal["last", "text", "all"]
BudgetConvention = Literal["tokens", "layer_average"]
#: "original": every surviving token keeps its position id in the unreduced sequence;
#: "contiguous": the reduced sequence is renumbered as if it were the input
PositionPolicy = Literal["original", "contiguous"]
POSITION_POLICIES: tuple[PositionPolicy, ...] = ("original", "contiguous")
#: the parameter every strategy takes to switch its position policy (``fastv:positions=contiguous``)
POSITIONS_PARAM = "positions"

SIGNALS: frozenset[str] = frozenset({"saliency", "text_embeddings", "attention", "hidden_states"})
QUERIES: frozenset[str] = frozenset({"last", "text", "all"})


@dataclass(frozen=True)
class StageSpec:
    """Where a strategy acts and which signals it needs there.

    ``kind="vision"``: on the projected visual tokens, before the language model.
    ``kind="llm"``: after decoder layer ``after_layer`` (0-based); layers up to and
    including it see every token that entered them, later layers see the survivors.
    The attention signal is that layer's attention from the ``query`` rows
    (``"last"``: the last prompt token; ``"text"``: every text token; ``"all"``:
    every token) to the visual tokens, head-averaged.

    >>> StageSpec.llm(1, "attention").after_layer
    1
    """

    kind: StageKind
    after_layer: int | None = None
    signals: frozenset[str] = frozenset()
    query: Query = "last"

    def __post_init__(self) -> None:
        if self.kind not in ("vision", "llm"):
            raise ValueError(f"stage kind must be 'vision' or 'llm', not {self.kind!r}")
        if self.kind == "llm" and (self.after_layer is None or self.after_layer < 0):
            raise ValueError("an 'llm' stage needs after_layer >= 0")
        if self.kind == "vision" and self.after_layer is not None:
            raise ValueError("a 'vision' stage takes no after_layer")
        unknown = set(self.signals) - SIGNALS
        if unknown:
            raise ValueError(f"unknown signal(s) {sorted(unknown)}; valid: {sorted(SIGNALS)}")
        if self.kind == "vision" and {"attention", "hidden_states"} & set(self.signals):
            raise ValueError("'attention' and 'hidden_states' exist only at an 'llm' stage")
        if self.query not in QUERIES:
            raise ValueError(f"query must be one of {sorted(QUERIES)}, not {self.query!r}")

    @classmethod
    def vision(cls, *signals: Signal) -> StageSpec:
        return cls("vision", None, frozenset(signals))

    @classmethod
    def llm(cls, after_layer: int, *signals: Signal, query: Query = "last") -> StageSpec:
        return cls("llm", after_layer, frozenset(signals), query)

    @property
    def label(self) -> str:
        """A short name used in per-sample records: ``vision`` or ``llm@3``."""
        return "vision" if self.kind == "vision" else f"llm@{self.after_layer}"


@dataclass(frozen=True)
class ModelInfo:
    """What a strategy may know about the model when it builds its schedule."""

    num_layers: int
    hidden_size: int
    name: str = ""


@dataclass
class StageContext:
    """Everything a strategy sees at one stage, for one sample.

    ``tokens`` are the visual tokens still present (projected embeddings at the vision
    stage, the layer's output hidden states at an LLM stage); ``origin[i]`` is the index
    of token ``i`` in the original visual sequence (a merged token carries the index of
    the token whose position it took). Optional signals are ``None`` unless the stage
    asked for them.

    ``segments`` are the parts the sample's visual tokens come in (:class:`~tokenbench.Segment`:
    an image, a crop, a tile, a frame, each with its own grid and its run of original
    indices); ``budget`` is for the whole sample. With one segment, ``grid`` is its
    grid (row-major over ``origin``); with several, ``grid`` is ``(1, num_visual)``, so a
    strategy that reads 2-D neighbourhoods must go by ``segments``
    (:func:`tokenbench.select_per_segment` runs a one-grid selection on each).
    """

    stage: StageSpec
    sample_id: str
    budget: int
    num_visual: int
    grid: tuple[int, int]
    num_layers: int
    tokens: torch.Tensor
    origin: torch.Tensor
    generator: torch.Generator
    saliency: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)
    segments: tuple[Segment, ...] = ()

    def __post_init__(self) -> None:
        if not self.segments:
            self.segments = single_segment(self.grid)
        elif len(self.segments) > 1:
            check_segments(self.segments, self.num_visual)
            self.grid = (1, self.num_visual)

    @property
    def num_tokens(self) -> int:
        """Visual tokens present at this stage."""
        return int(self.tokens.shape[0])

    @property
    def segment_ids(self) -> torch.Tensor:
        """``[num_tokens]``: the segment each present token belongs to (index into ``segments``)."""
        return segment_of(self.segments, self.origin)

    def require(self, signal: Signal) -> torch.Tensor:
        """The optional ``signal`` (``saliency``, ``text_embeddings`` or ``attention``) the stage asked for.

        Raises :class:`tokenbench.PluginError` naming the stage when the adapter gave none
        (a broken adapter, or a schedule that did not ask for it), also under ``python -O``.
        """
        value = getattr(self, signal, None) if signal in ("saliency", "text_embeddings", "attention") else None
        if value is None:
            raise PluginError(f"{self.stage.label}: no {signal!r} signal in the stage context (the stage asked for {sorted(self.stage.signals) or 'none'})")
        return cast("torch.Tensor", value)

    @classmethod
    def for_testing(
        cls,
        num_visual: int = 16,
        budget: int = 4,
        dim: int = 8,
        stage: StageSpec | None = None,
        seed: int = 0,
        num_layers: int = 4,
        num_text: int = 3,
        segments: tuple[Segment, ...] = (),
    ) -> StageContext:
        """A context with random signals, for unit tests of strategies.

        ``segments``: the sample's visual segments (``num_visual`` is then their total).

        >>> from tokenbench import Segment
        >>> ctx = StageContext.for_testing(budget=5, segments=(Segment("base", (2, 2), 0), Segment("crops", (2, 4), 4)))
        >>> ctx.num_visual, ctx.grid, ctx.segment_ids.tolist()
        (12, (1, 12), [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
        """
        import torch

        g = torch.Generator().manual_seed(seed)
        if segments:
            num_visual = segments[-1].stop
        side = int(math.isqrt(num_visual))
        grid = segments[0].grid if len(segments) == 1 else (side, side) if side * side == num_visual else (1, num_visual)
        stage = stage or StageSpec.vision("saliency", "text_embeddings")
        sal = torch.rand(num_visual, generator=g)
        return cls(
            stage=stage,
            sample_id="test-0",
            budget=budget,
            num_visual=num_visual,
            grid=grid,
            num_layers=num_layers,
            tokens=torch.randn(num_visual, dim, generator=g),
            origin=torch.arange(num_visual),
            generator=torch.Generator().manual_seed(seed + 1),
            saliency=sal / sal.sum(),
            text_embeddings=torch.randn(num_text, dim, generator=g),
            attention=torch.softmax(torch.randn(num_text, num_visual, generator=g), dim=-1) if stage.kind == "llm" else None,
            segments=segments,
        )


@dataclass(frozen=True)
class Selection:
    """What a strategy returns: the visual tokens to keep, and optional extras.

    - ``keep``: indices into the current visual tokens, sorted, unique, in range.
    - ``values``: optional replacement states for the kept tokens (``[len(keep), d]``),
      for strategies that merge dropped tokens into kept ones.
    - ``merged``: optional extra tokens (``[m, d]``) made from dropped ones, each placed
      at the position of the current token ``merged_positions[j]`` (its donor: the merged
      token takes the donor's origin and position id), or, with ``merged_at_end``, all
      after the kept visual tokens in that order (SparseVLM's release appends them).
    - ``scores``: optional per-token scores, recorded for audit.
    """

    keep: torch.Tensor
    values: torch.Tensor | None = None
    merged: torch.Tensor | None = None
    merged_positions: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    merged_at_end: bool = False

    @property
    def count(self) -> int:
        """Visual tokens present after this selection (kept plus merged)."""
        extra = 0 if self.merged is None else int(self.merged.shape[0])
        return int(self.keep.numel()) + extra


def validate_selection(selection: object, ctx: StageContext) -> Selection:
    """Check a plugin's output against the contract; raise :class:`SelectionError`.

    >>> import torch
    >>> ctx = StageContext.for_testing(num_visual=9, budget=3)
    >>> validate_selection(Selection(keep=torch.tensor([2, 1])), ctx)
    Traceback (most recent call last):
    ...
    tokenbench.errors.SelectionError: keep indices are not sorted ascending
    """
    import torch

    if not isinstance(selection, Selection):
        raise SelectionError(f"select() returned {type(selection).__name__}, expected tokenbench.Selection")
    keep = selection.keep
    n, dim = ctx.tokens.shape
    if not isinstance(keep, torch.Tensor) or keep.dim() != 1:
        raise SelectionError("keep must be a 1-D integer tensor")
    if keep.dtype not in (torch.int64, torch.int32):
        raise SelectionError(f"keep must hold integers, not {keep.dtype}")
    if keep.numel():
        if int(keep.min()) < 0 or int(keep.max()) >= n:
            raise SelectionError(f"keep indices out of range [0, {n})")
        diffs = keep[1:] - keep[:-1]
        if bool((diffs == 0).any()):
            raise SelectionError("keep indices contain duplicates")
        if bool((diffs < 0).any()):
            raise SelectionError("keep indices are not sorted ascending")
    if selection.values is not None:
        _check_states(selection.values, (keep.numel(), dim), "values")
    if (selection.merged is None) != (selection.merged_positions is None):
        raise SelectionError("merged and merged_positions must be given together")
    if selection.merged is not None and selection.merged_positions is not None:
        m = selection.merged.shape[0] if selection.merged.dim() == 2 else -1
        _check_states(selection.merged, (m, dim), "merged")
        pos = selection.merged_positions
        if pos.dim() != 1 or pos.numel() != m:
            raise SelectionError(f"merged_positions must have one index per merged token ({m})")
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= n):
            raise SelectionError(f"merged_positions out of range [0, {n})")
    if selection.count == 0:
        raise SelectionError("the selection keeps no visual token")
    if selection.scores is not None and not bool(torch.isfinite(selection.scores).all()):
        raise SelectionError("scores contain NaN or infinite values")
    return selection


def _check_states(t: object, shape: tuple[int, int], what: str) -> None:
    import torch

    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise SelectionError(f"{what} must have shape {shape}, got {got}")
    if not bool(torch.isfinite(t).all()):
        raise SelectionError(f"{what} contain NaN or infinite values")


class Strategy:
    """Base class of every reduction strategy.

    Subclasses set the class attributes and implement :meth:`schedule` and
    :meth:`select`. Parameters are declared in ``defaults``; ``Strategy(**params)``
    rejects unknown names and coerces command-line strings to the default's type.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: "tokens": the budget is the visual-token count after the last stage;
    #: "layer_average": it is the layer-averaged count (SparseVLM's convention). Not a
    #: ClassVar: a strategy whose convention depends on a parameter sets it in ``__init__``.
    budget_convention: BudgetConvention = "tokens"
    #: keep fraction used when a run gives no budget
    default_keep: ClassVar[float] = 0.25
    #: True for the control that keeps everything
    keeps_all: ClassVar[bool] = False
    #: False when the count may fall short of the budget (e.g. pooling to a grid)
    exact_budget: ClassVar[bool] = True
    #: True for a strategy that reads the task's ground truth (which tokens each answer
    #: depends on): it runs only on tasks with ``provides_relevant_tokens``
    needs_ground_truth: ClassVar[bool] = False
    #: the position ids the language model sees after a reduction: what the method's
    #: official code does (``"original"`` or ``"contiguous"``); every strategy also takes
    #: ``positions=...`` to switch it, and a switched run is keyed and labelled apart
    position_policy: PositionPolicy = "original"

    def __init__(self, **params: Any) -> None:
        positions = params.pop(POSITIONS_PARAM, None)
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted([*self.defaults, POSITIONS_PARAM]))
            raise UsageError(f"strategy {self.name!r} has no parameter {unknown[0]!r} (valid: {valid})")
        merged = dict(self.defaults)
        for key, value in params.items():
            merged[key] = coerce_param(self.name, key, value, self.defaults[key])
        if positions is not None and positions != type(self).position_policy:
            if positions not in POSITION_POLICIES:
                raise UsageError(f"strategy {self.name!r}: parameter {POSITIONS_PARAM}={positions!r} must be one of {', '.join(POSITION_POLICIES)}")
            self.position_policy = positions
            merged[POSITIONS_PARAM] = positions  # only a switched policy enters the run key and the label
        self.params: dict[str, Any] = merged

    def schedule(self, model: ModelInfo) -> tuple[StageSpec, ...]:
        raise NotImplementedError

    def select(self, ctx: StageContext) -> Selection:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The name with the parameters that differ from the defaults (as in tables)."""
        return strategy_label(self.name, self.params, self.defaults)

    def __repr__(self) -> str:
        return strategy_label(self.name, self.params)
