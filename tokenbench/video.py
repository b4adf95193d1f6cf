"""Read a video file's frames with PyAV, at a rate or a count.

:func:`read_frames` decodes a file into RGB ``PIL`` images; which frames it keeps is
decided by :func:`evenly_spaced` (a count) or :func:`at_rate` (a rate), plain functions
on frame indices and timestamps:

- ``fps`` given: one frame per ``1/fps`` seconds, the decoded frame nearest each target
  time ``0, 1/fps, 2/fps, …`` (times from the first frame's timestamp; a tie goes to the
  earlier frame), for every target up to the last frame's time, so a clip of ``D``
  seconds gives ``D × fps`` frames (a rate above the video's own repeats frames). With
  ``num_frames`` too, that is a cap: when the rate gives ``m > num_frames`` frames,
  ``num_frames`` of them are kept by the :func:`evenly_spaced` rule on ``m``;
- else ``num_frames`` given: ``numpy.linspace(0, n - 1, num_frames).round()`` of the
  ``n`` frames (lmms-eval's and Qwen's vision utils' rule; more than ``n`` repeats
  frames);
- neither: every frame.

Only the kept frames are converted to images. A count read from the file's header
saves a pass; when it is missing or wrong, the file is decoded once more to count.

PyAV (``import av``, the ``video`` extra) is imported only when a file is read.

>>> evenly_spaced(10, 4)
[0, 3, 6, 9]
>>> list(at_rate([(0.0, "a"), (0.25, "b"), (0.5, "c"), (0.75, "d"), (1.0, "e")], fps=2))
['a', 'c', 'e']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tokenbench.errors import TaskDataError

T = TypeVar("T")

#: timestamps closer than this (seconds) count as equal
_EPS = 1e-6


def evenly_spaced(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread evenly over ``total`` frames, first and last included.

    >>> evenly_spaced(8, 3)
    [0, 4, 7]
    >>> evenly_spaced(3, 5)
    [0, 0, 1, 2, 2]
    >>> evenly_spaced(0, 4)
    []
    """
    import numpy as np

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if total < 1:
        return []
    return [int(i) for i in np.linspace(0, total - 1, num_frames).round()]


def at_rate(frames: Iterable[tuple[float, T]], fps: float) -> Iterator[T]:
    """From ``(time, item)`` pairs in time order, the item nearest each of ``0, 1/fps, 2/fps, …``.

    Times count from the first pair's; targets run up to the last pair's time; a tie
    goes to the earlier item. Items are yielded as soon as they are chosen, so a decoder
    can stream through a long video.

    >>> list(at_rate([(1.0, "a"), (1.25, "b"), (1.5, "c"), (1.75, "d")], fps=3))
    ['a', 'b', 'd']
    >>> list(at_rate([(0.0, "a"), (0.5, "b")], fps=4))
    ['a', 'a', 'b']
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    k = 0
    start: float | None = None
    prev: tuple[float, T] | None = None
    for time, item in frames:
        if start is None:
            start = time
        t = time - start
        while k / fps <= t + _EPS:
            target = k / fps
            yield prev[1] if prev is not None and target - prev[0] <= t - target + _EPS else item
            k += 1
        prev = (t, item)


def read_frames(path: str | Path, num_frames: int | None = None, fps: float | None = None, *, sample: str | None = None) -> list[Any]:
    """The frames of the video file ``path`` as RGB ``PIL.Image.Image``, kept by the module's rule.

    ``sample`` (an id) goes into the error messages. A missing PyAV or an unreadable file
    raises :class:`TaskDataError` in one line naming the file.
    """
    of = f" for sample {sample}" if sample is not None else ""
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    try:
        import av
    except ImportError:
        raise TaskDataError(
            f"{path}: video decoding needs PyAV (pip install 'tokenbench[video]')" + (f"; sample {sample}" if sample is not None else "")
        ) from None
    try:
        if fps is not None:
            rate = float(fps)
            guess = _rate_count(av, path, rate)
            frames = _keep(lambda: at_rate(_timed(av, path), rate), num_frames, guess, cap=True)
        elif num_frames is None:
            frames = [_image(f) for f in _decoded(av, path)]
        else:
            with av.open(str(path)) as container:
                total = _stream(container).frames or None
            frames = _keep(lambda: _decoded(av, path), num_frames, total, cap=False)
        if not frames:
            raise ValueError("no frame could be decoded")
        return frames
    except (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as exc:
        reason = (getattr(exc, "strerror", None) or str(exc)).replace("\n", " ") or type(exc).__name__
        raise TaskDataError(f"{path}: cannot read video{of} ({reason})") from None


def _keep(frames: Callable[[], Iterator[Any]], num_frames: int | None, guess: int | None, *, cap: bool) -> list[Any]:
    """Of the ``n`` frames ``frames()`` yields, those at :func:`evenly_spaced` ``(n, num_frames)``, as images.

    ``num_frames`` ``None``: all of them; ``cap``: all of them as well when ``n <=
    num_frames``. ``guess`` is ``n`` as the header tells it (``None``: unknown); a
    wrong or unknown one costs a pass that counts.
    """
    if num_frames is None:
        return [_image(f) for f in frames()]
    if guess is None and not cap:
        guess = sum(1 for _ in frames())
    for attempt in range(2):
        if attempt:
            guess = sum(1 for _ in frames())
        take_all = cap and (guess is None or guess <= num_frames)
        wanted = Counter() if take_all or guess is None else Counter(evenly_spaced(guess, num_frames))
        kept: list[Any] = []
        count = 0
        for count, frame in enumerate(frames(), 1):
            if take_all:
                if count > num_frames:
                    break  # more than the guess allowed for: count, then pick
                kept.append(_image(frame))
            elif wanted[count - 1]:
                kept.extend([_image(frame)] * wanted[count - 1])
        if (take_all and count <= num_frames) or (not take_all and count == guess):
            return kept
    raise RuntimeError("the number of decoded frames changed between two passes")


def _image(frame: Any) -> Any:
    return frame.to_image().convert("RGB")


def _rate_count(av: Any, path: str | Path, fps: float) -> int | None:
    """How many frames :func:`at_rate` gives at ``fps``, from the header's frame count and rate; ``None``: unknown."""
    with av.open(str(path)) as container:
        stream = _stream(container)
        n, rate = stream.frames, float(stream.average_rate or 0)
    if n < 1 or rate <= 0:
        return None
    return int((n - 1) / rate * fps + _EPS) + 1


def _stream(container: Any) -> Any:
    """The first video stream, decoded on threads."""
    if not container.streams.video:
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _decoded(av: Any, path: str | Path) -> Iterator[Any]:
    """Every decoded frame of the first video stream, in presentation order."""
    with av.open(str(path)) as container:
        yield from container.decode(_stream(container))


def _timed(av: Any, path: str | Path) -> Iterator[tuple[float, Any]]:
    """``(seconds, frame)`` pairs; a frame without a timestamp is placed by the stream's average rate."""
    with av.open(str(path)) as container:
        stream = _stream(container)
        rate = float(stream.average_rate or 0) or 1.0
        for i, frame in enumerate(container.decode(stream)):
            yield (float(frame.time) if frame.time is not None else i / rate), frame
