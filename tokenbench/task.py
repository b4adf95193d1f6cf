"""The task contract: samples, prompts and per-sample scores.

A task yields :class:`Sample` objects, says how to phrase each as a question for a
model family, and scores a prediction. ``metric_kind`` tells the statistics which
paired test applies: ``"binary"`` (McNemar) or ``"continuous"`` (permutation).

>>> s = Sample(id="q1", image="a.png", question="What colour?", answers=("red",))
>>> s.answers
('red',)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from tokenbench.errors import TaskDataError, UsageError

MetricKind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class Sample:
    """One question about one image, several images, or a video.

    ``image`` is an image source (a path, a ``PIL.Image.Image``, or a zero-argument
    callable returning one), a list or tuple of them (a multi-image sample, in order), or
    ``None`` (a video-only sample); ``kind`` is the question type or
    benchmark category (used by ``--by kind`` and stratified ``--limit``); ``meta`` holds
    task-specific extras (for example ``relevant_cells`` on ``shapes``); ``video`` is a
    path to a video file or a list or tuple of frame image sources (see
    :meth:`load_video`).

    >>> from PIL import Image
    >>> red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (2, 2), "blue")
    >>> s = Sample(id="q2", image=[red, lambda: blue], question="Same colour?", answers=("no",))
    >>> s.num_images, s.has_video, [im.size for im in s.load_images()], s.load_image().size
    (2, False, [(4, 4), (2, 2)], (4, 4))
    >>> v = Sample(id="v1", image=None, question="", answers=("a",), video=[red] * 3 + [blue])
    >>> v.num_images, v.has_video, v.load_images(), [im.size for im in v.load_video(num_frames=2)]
    (0, True, [], [(4, 4), (2, 2)])
    """

    id: str
    image: Any
    question: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] | None = None
    kind: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    video: Any = None

    @property
    def num_images(self) -> int:
        """How many images the sample carries: 0 (``image`` is ``None``), 1, or the list's length."""
        if self.image is None:
            return 0
        return len(self.image) if isinstance(self.image, (list, tuple)) else 1

    @property
    def has_video(self) -> bool:
        """Whether the sample carries a video (a file or a non-empty frame list)."""
        return bool(self.video) if isinstance(self.video, (list, tuple)) else self.video is not None

    def load_image(self) -> Any:
        """The image as an RGB ``PIL.Image.Image``; of a multi-image sample, the first."""
        if not self.num_images:
            raise TaskDataError(f"sample {self.id} has no image")
        return self._load(self.image[0] if isinstance(self.image, (list, tuple)) else self.image, "image")

    def load_images(self) -> list[Any]:
        """Every image, in order, as RGB ``PIL.Image.Image`` (``[]`` when ``image`` is ``None``)."""
        if self.image is None:
            return []
        sources = self.image if isinstance(self.image, (list, tuple)) else [self.image]
        return [self._load(src, "image") for src in sources]

    def load_video(self, num_frames: int | None = None, fps: float | None = None) -> list[Any]:
        """The video's frames as RGB ``PIL.Image.Image``.

        A file is decoded with PyAV (the ``video`` extra; :mod:`tokenbench.video`):
        ``fps`` given, the frame nearest each of ``0, 1/fps, 2/fps, …`` seconds (from the
        first frame, up to the last; a clip of ``D`` seconds gives ``D × fps`` frames),
        and with ``num_frames`` too, at most ``num_frames`` of those, evenly spaced;
        else ``num_frames`` given, the frames at ``numpy.linspace(0, n - 1,
        num_frames).round()`` of its ``n`` (as lmms-eval and Qwen's vision utils
        sample; more than ``n`` repeats frames); neither, every frame. A frame list has
        no timestamps, so it is taken as already sampled: ``fps`` does not apply to it,
        and ``num_frames`` picks the same ``linspace`` indices of the list (with
        ``fps`` given, only when the list is longer). Only the picked frames are read.

        >>> from PIL import Image
        >>> frames = [lambda i=i: Image.new("L", (1, 1), i) for i in range(10)]
        >>> s = Sample(id="v", image=None, question="", answers=("a",), video=frames)
        >>> [im.getpixel((0, 0))[0] for im in s.load_video(num_frames=4)]
        [0, 3, 6, 9]
        >>> len(s.load_video()), len(s.load_video(fps=2)), len(s.load_video(fps=2, num_frames=4)), len(s.load_video(fps=2, num_frames=16))
        (10, 10, 4, 10)
        """
        from tokenbench.video import evenly_spaced, read_frames

        if not self.has_video:
            raise TaskDataError(f"sample {self.id} has no video")
        if isinstance(self.video, (list, tuple)):
            n = len(self.video)
            capped = fps is not None and num_frames is not None and n <= num_frames
            picks = range(n) if num_frames is None or capped else evenly_spaced(n, num_frames)
            return [self._load(self.video[i], "video frame") for i in picks]
        return read_frames(self.video, num_frames=num_frames, fps=fps, sample=self.id)

    def _load(self, source: Any, what: str) -> Any:
        """One image source (a path, a ``PIL`` image, or a callable returning one) as RGB."""
        from PIL import Image

        if callable(source) and not hasattr(source, "convert"):  # a lazy image
            return source().convert("RGB")
        if isinstance(source, (str, Path)):
            try:
                with Image.open(source) as im:
                    return im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise TaskDataError(f"{source}: cannot read {what} for sample {self.id} ({exc})") from None
        return source.convert("RGB")


class Task:
    """Base class of every task.

    Subclasses set ``name``, ``description``, ``metric_kind`` and implement
    :meth:`load` and :meth:`score`; :meth:`prompt` and :meth:`aggregate` have defaults.
    ``Task(path, **options)`` is how the registry builds a task from ``NAME[:PATH]``.

    Samples that are not independent (two questions on one image, an item's option
    rotations) are declared by ``cluster_key``, the :attr:`Sample.meta` key whose value
    names a sample's cluster (or by overriding :meth:`cluster`). The cluster is stored
    with each sample's record, and comparisons then test and bound the paired
    difference over clusters (:mod:`tokenbench.stats_clustered`). The default, ``None``,
    makes every sample its own cluster, and so does a sample without the key.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metric_kind: ClassVar[MetricKind] = "binary"
    #: the metric in words, printed beside accuracy numbers
    metric_name: ClassVar[str] = "exact match"
    #: max new tokens a prediction needs
    max_new_tokens: ClassVar[int] = 8
    #: generation also ends once the new text contains one of these (besides the model's
    #: EOS): a short-answer task stops at a newline, as lmms-eval's ``until`` does; a
    #: long-answer task sets ``()``
    stop_strings: ClassVar[tuple[str, ...]] = ("\n",)
    #: True if the task needs a path (``NAME:PATH``)
    needs_path: ClassVar[bool] = False
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: True when :meth:`relevant_tokens` knows, per sample, which visual tokens the answer
    #: depends on (ground truth: strategies that declare ``needs_ground_truth`` run only here)
    provides_relevant_tokens: ClassVar[bool] = False
    #: the ``Sample.meta`` key naming the cluster of samples that are not independent
    #: (``"group"``: MME's two questions on one image, MMBench's rotations); ``None``: none
    cluster_key: ClassVar[str | None] = None

    def __init__(self, path: str | None = None, **options: Any) -> None:
        if self.needs_path and not path:
            raise TaskDataError(f"task {self.name!r} needs a path: --task {self.name}:PATH")
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise UsageError(f"task {self.name!r} has no option {unknown[0]!r} (valid: {valid})")
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

    def diagnostics(self, sample: Sample, result: Any) -> dict[str, float]:
        """Per-sample extras stored beside the score (e.g. relevant-token recall); default none.

        ``result`` is the :class:`tokenbench.GenerationResult` of the sample.
        """
        return {}

    def cluster(self, sample: Sample) -> str | None:
        """The cluster ``sample`` belongs to for the paired statistics; ``None``: a cluster of its own.

        >>> class Grouped(Task):
        ...     cluster_key = "group"
        >>> Grouped().cluster(Sample(id="q1", image=None, question="", answers=("a",), meta={"group": 7}))
        '7'
        >>> Task().cluster(Sample(id="q1", image=None, question="", answers=("a",), meta={"group": 7})) is None
        True
        """
        if self.cluster_key is None or self.cluster_key not in sample.meta:
            return None
        return str(sample.meta[self.cluster_key])

    def relevant_tokens(self, sample: Sample, grid: tuple[int, int]) -> list[int] | None:
        """Indices (row-major on ``grid``) of the visual tokens ``sample``'s answer depends on; ``None``: unknown."""
        return None

    def describe(self) -> dict[str, Any]:
        """What identifies this task's configuration, for run keys and provenance."""
        return {"name": self.name, "path": self.path, "options": dict(sorted(self.options.items()))}


def stratified_subset(samples: Sequence[Sample], limit: int, seed: int = 0) -> list[Sample]:
    """A fixed, seeded subset of ``limit`` items, proportional by ``kind``.

    An *item* is a sample, or all samples sharing ``meta["group"]`` (MMBench's option
    rotations, MME's two questions on one image): a group is kept or dropped whole and
    counts once towards ``limit``. Each kind gets ``limit × its share`` items, rounded by
    largest remainder (ties to the kind that sorts first); within a kind the items are a
    seeded shuffle's prefix. The result keeps the original order, so the same samples,
    limit and seed always give the same list. ``limit`` at or above the item count
    returns every sample. Nothing is recorded here.

    >>> s = [Sample(id=str(i), image=None, question="", answers=("a",), kind="xy"[i % 2]) for i in range(10)]
    >>> [x.id for x in stratified_subset(s, 4, seed=1)] == [x.id for x in stratified_subset(s, 4, seed=1)]
    True
    >>> sorted(x.kind for x in stratified_subset(s, 4, seed=1))
    ['x', 'x', 'y', 'y']
    """
    import random

    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    items: dict[Any, list[int]] = {}
    for i, s in enumerate(samples):
        key = ("group", s.meta["group"]) if "group" in s.meta else ("sample", i)
        items.setdefault(key, []).append(i)
    if limit >= len(items):
        return list(samples)
    strata: dict[str, list[Any]] = {}
    for key, idx in items.items():
        strata.setdefault(str(samples[idx[0]].kind or ""), []).append(key)
    total = len(items)
    exact = {k: limit * len(v) / total for k, v in strata.items()}
    quota = {k: int(q) for k, q in exact.items()}
    by_remainder = sorted(strata, key=lambda k: (-(exact[k] - quota[k]), k))
    for k in by_remainder[: limit - sum(quota.values())]:
        quota[k] += 1
    keep: list[int] = []
    for kind in sorted(strata):
        keys = list(strata[kind])
        random.Random(f"{seed}:{kind}").shuffle(keys)
        for key in keys[: quota[kind]]:
            keep.extend(items[key])
    return [samples[i] for i in sorted(keep)]
