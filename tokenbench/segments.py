"""Visual segments: the parts a sample's visual tokens come in.

A sample's visual input is one or more *segments*: an image, the base (overview) image
and the high-resolution crops of an AnyRes model, the tiles and thumbnail of a tiled
model, the frames of a video. Each segment is a grid of visual tokens (rows × cols,
row-major) and a contiguous run of the sample's original visual indices
(:attr:`Segment.start` onwards). Separator tokens the model inserts between or inside
segments (LLaVA-NeXT's ``image_newline`` after every row, tile markers) are not visual
tokens: no strategy sees or drops them.

The budget applies to the whole sample. A strategy that ranks tokens spends it over all
segments at once; a strategy that works on one grid (pooling, sppruner) runs on each
segment with its share (:func:`split_budget`, through
:func:`tokenbench.select_per_segment`).

>>> segs = (Segment("base", (2, 2), 0), Segment("crops", (3, 4), 4))
>>> [s.count for s in segs], segs[1].stop
([4, 12], 16)
>>> split_budget([4, 12], 6)
[2, 4]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Segment:
    """One segment of a sample's visual tokens.

    ``kind`` says what it is (``"image"``, ``"base"``, ``"crops"``, ``"tile"``,
    ``"thumbnail"``, ``"frame"``); ``grid`` its token grid (rows, cols); ``start`` the
    original visual index of its first token; ``source`` which of the sample's visual
    inputs it comes from (image ``k`` of :meth:`tokenbench.Sample.load_images`, or the
    video, numbered after the images).
    """

    kind: str
    grid: tuple[int, int]
    start: int = 0
    source: int = 0

    @property
    def count(self) -> int:
        """Visual tokens in the segment."""
        return self.grid[0] * self.grid[1]

    @property
    def stop(self) -> int:
        """One past its last original visual index."""
        return self.start + self.count

    def to_record(self) -> dict[str, Any]:
        """The JSON form stored in per-sample records (:meth:`from_record` reads it back)."""
        return {"kind": self.kind, "grid": list(self.grid), "start": self.start, "source": self.source}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Segment:
        """
        >>> Segment.from_record(Segment("frame", (2, 3), 6, 1).to_record())
        Segment(kind='frame', grid=(2, 3), start=6, source=1)
        """
        rows, cols = record["grid"]
        return cls(str(record["kind"]), (int(rows), int(cols)), int(record.get("start", 0)), int(record.get("source", 0)))


def single_segment(grid: tuple[int, int], kind: str = "image") -> tuple[Segment, ...]:
    """The segments of a sample with one image of ``grid``."""
    return (Segment(kind, (int(grid[0]), int(grid[1])), 0, 0),)


def stack_segments(parts: Sequence[tuple[str, tuple[int, int], int]]) -> tuple[Segment, ...]:
    """Segments laid one after another: ``(kind, grid, source)`` each, starts accumulated.

    >>> [s.start for s in stack_segments([("image", (2, 2), 0), ("image", (1, 3), 1)])]
    [0, 4]
    """
    out: list[Segment] = []
    start = 0
    for kind, grid, source in parts:
        out.append(Segment(kind, (int(grid[0]), int(grid[1])), start, int(source)))
        start += out[-1].count
    return tuple(out)


def check_segments(segments: Sequence[Segment], num_visual: int) -> None:
    """Raise ``ValueError`` unless the segments tile ``0 .. num_visual`` in order."""
    start = 0
    for seg in segments:
        if seg.start != start or seg.count <= 0:
            raise ValueError(f"segments must tile the visual tokens in order: {seg} starts at {seg.start}, expected {start}")
        start = seg.stop
    if start != num_visual:
        raise ValueError(f"segments cover {start} visual tokens, the sample has {num_visual}")


def segment_of(segments: Sequence[Segment], origin: torch.Tensor) -> torch.Tensor:
    """The index of the segment each original visual index in ``origin`` falls in.

    >>> import torch
    >>> segment_of((Segment("base", (2, 2), 0), Segment("crops", (1, 3), 4)), torch.tensor([0, 3, 4, 6])).tolist()
    [0, 0, 1, 1]
    """
    import torch

    starts = torch.tensor([s.start for s in segments[1:]], dtype=origin.dtype, device=origin.device)
    return torch.bucketize(origin, starts, right=True)


def segment_counts(segments: Sequence[Segment], origin: torch.Tensor) -> list[int]:
    """Tokens present in each segment, given the original indices of the tokens present."""
    import torch

    if not segments:
        return []
    return torch.bincount(segment_of(segments, origin), minlength=len(segments)).tolist()


def split_budget(sizes: Sequence[int], budget: int) -> list[int]:
    """``budget`` shared over segments of ``sizes`` tokens in proportion to their size.

    Largest remainder (ties to the earlier segment); no share exceeds its segment; the
    shares sum to ``min(budget, sum(sizes))``.

    >>> split_budget([576, 1728], 192)
    [48, 144]
    >>> split_budget([3, 3, 3], 4)
    [2, 1, 1]
    >>> split_budget([2, 10], 11)
    [2, 9]
    """
    total = sum(sizes)
    budget = max(0, min(int(budget), total))
    if total == 0:
        return [0 for _ in sizes]
    exact = [budget * n / total for n in sizes]
    share = [min(int(e), n) for e, n in zip(exact, sizes)]
    while sum(share) < budget:
        room = [i for i, n in enumerate(sizes) if share[i] < n]
        best = max(room, key=lambda i: (exact[i] - share[i], -i))
        share[best] += 1
    return share
