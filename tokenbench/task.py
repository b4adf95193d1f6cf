"""The task contract: samples, prompts and per-sample scores.

A task yields :class:`Sample` objects, says how to phrase each as a question for a
model family, and scores a prediction. ``metric_kind`` tells the statistics which
paired test applies: ``"binary"`` (McNemar) or ``"continuous"`` (permutation).

>>> s = Sample(id="q1", image="a.png", question="What colour?", answers=("red",))
>>> s.answers
('red',)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

MetricKind = Literal["binary", "continuous"]


class TaskDataError(ValueError):
    """A task's input file is missing or malformed; the message names file and line."""


@dataclass(frozen=True)
class Sample:
    """One question about one image.

    ``image`` is a path or a ``PIL.Image.Image``; ``kind`` is the question type or
    benchmark category (used by ``--by kind`` and stratified ``--limit``); ``meta`` holds
    task-specific extras (for example ``relevant_cells`` on ``shapes``).
    """

    id: str
    image: Any
    question: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] | None = None
    kind: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def load_image(self) -> Any:
        """The image as an RGB ``PIL.Image.Image``."""
        from PIL import Image

        if isinstance(self.image, (str, Path)):
            try:
                with Image.open(self.image) as im:
                    return im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise TaskDataError(f"{self.image}: cannot read image for sample {self.id} ({exc})") from None
        return self.image.convert("RGB")


class Task:
    """Base class of every task.

    Subclasses set ``name``, ``description``, ``metric_kind`` and implement
    :meth:`load` and :meth:`score`; :meth:`prompt` and :meth:`aggregate` have defaults.
    ``Task(path, **options)`` is how the registry builds a task from ``NAME[:PATH]``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metric_kind: ClassVar[MetricKind] = "binary"
    #: the metric in words, printed beside accuracy numbers
    metric_name: ClassVar[str] = "exact match"
    #: max new tokens a prediction needs
    max_new_tokens: ClassVar[int] = 8
    #: True if the task needs a path (``NAME:PATH``)
    needs_path: ClassVar[bool] = False
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, path: str | None = None, **options: Any) -> None:
        if self.needs_path and not path:
            raise TaskDataError(f"task {self.name!r} needs a path: --task {self.name}:PATH")
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"task {self.name!r} has no option {unknown[0]!r} (valid: {valid})")
        self.path = path
        self.options: dict[str, Any] = {**self.defaults, **options}

    def load(self) -> Sequence[Sample]:
        raise NotImplementedError

    def prompt(self, sample: Sample, family: str) -> str:
        """The user-turn text for ``sample``; ``family`` is the adapter's model family."""
        if sample.choices:
            letters = "ABCDEFGHIJ"
            opts = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(sample.choices))
            return f"{sample.question}\n{opts}\nAnswer with the option's letter from the given choices directly."
        return sample.question

    def score(self, sample: Sample, prediction: str) -> float:
        raise NotImplementedError

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        """Task-level metrics beyond the mean score (e.g. MME's score); default none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What identifies this task's configuration, for run keys and provenance."""
        return {"name": self.name, "path": self.path, "options": dict(sorted(self.options.items()))}
