"""``jsonl``: bring your own data, one JSON object a line.

Each line: ``{"id": ..., "image": "relative/path.png", "question": ..., "answers":
[...], "choices": [...] (optional), "kind": ... (optional)}``. Instead of ``image``
(one image), a line may give ``"images": ["a.png", "b.png"]`` (several, in order;
not together with ``image``), ``"video": "clip.mp4"`` (a video file) or ``"video":
["f0.png", "f1.png", ...]`` (its frames, in order), or images and a video together;
at least one of ``image``, ``images``, ``video`` is required. Every path is relative
to the file and must exist. Scoring is exact match after normalisation (case,
punctuation, articles, number words); with ``choices``, the option letter or the
option text counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import choice_letter, exact_match
from tokenbench.task import Sample, Task, TaskDataError

_REQUIRED = ("id", "question", "answers")
#: at least one of these (``image`` and ``images`` exclude each other)
_MEDIA = ("image", "images", "video")


class JsonlTask(Task):
    name = "jsonl"
    description = "Your own data: one JSON object a line (id, image, question, answers[, choices, kind])."
    metric_kind = "binary"
    needs_path = True
    max_new_tokens = 8

    def load(self) -> Sequence[Sample]:
        path = Path(str(self.path))
        if not path.is_file():
            raise TaskDataError(f"{path}: file not found (expected a .jsonl file with one JSON object a line)")
        samples: list[Sample] = []
        seen: set[str] = set()
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                samples.append(self._parse(path, lineno, line, seen))
        if not samples:
            raise TaskDataError(f"{path}: no samples (expected one JSON object a line)")
        return samples

    def _parse(self, path: Path, lineno: int, line: str, seen: set[str]) -> Sample:
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise TaskDataError(f"{where}: expected a JSON object")
        missing = [k for k in _REQUIRED if k not in obj]
        if not any(k in obj for k in _MEDIA):
            missing.append("image, images or video")
        if missing:
            raise TaskDataError(f"{where}: missing key(s) {', '.join(missing)} (need {', '.join(_REQUIRED)} and one of {', '.join(_MEDIA)})")
        if "image" in obj and "images" in obj:
            raise TaskDataError(f"{where}: give 'image' (one) or 'images' (a list), not both")
        answers = obj["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise TaskDataError(f"{where}: 'answers' must be a non-empty list of strings")
        sid = str(obj["id"])
        if sid in seen:
            raise TaskDataError(f"{where}: duplicate id {sid!r}")
        seen.add(sid)
        image: Any = None
        if "image" in obj:
            image = _file(path, where, "image", obj["image"])
        elif "images" in obj:
            image = _files(path, where, "images", obj["images"])
        video: Any = None
        if "video" in obj:
            raw = obj["video"]
            video = _files(path, where, "video", raw) if isinstance(raw, list) else _file(path, where, "video", raw)
        choices = obj.get("choices")
        return Sample(
            id=sid,
            image=image,
            question=str(obj["question"]),
            answers=tuple(answers),
            choices=tuple(str(c) for c in choices) if choices else None,
            kind=str(obj["kind"]) if obj.get("kind") is not None else None,
            video=video,
        )

    def score(self, sample: Sample, prediction: str) -> float:
        if sample.choices:
            letter = choice_letter(prediction, len(sample.choices))
            if letter is not None:
                picked = sample.choices["ABCDEFGHIJ".index(letter)]
                return float(exact_match(picked, sample.answers) or letter in sample.answers)
        return exact_match(prediction, sample.answers)


def _file(path: Path, where: str, key: str, value: Any) -> str:
    """The existing file ``value`` names, relative to the .jsonl ``path``."""
    if value is None or isinstance(value, (bool, list, dict)):
        raise TaskDataError(f"{where}: {key!r} must be a path (a string), got {value!r}")
    file = path.parent / str(value)
    if not file.is_file():
        raise TaskDataError(f"{where}: {key} {value!r} not found (paths are relative to the .jsonl file)")
    return str(file)


def _files(path: Path, where: str, key: str, value: Any) -> tuple[str, ...]:
    """The existing files a non-empty list of paths names, in order."""
    if not isinstance(value, list) or not value:
        raise TaskDataError(f"{where}: {key!r} must be a non-empty list of paths, got {value!r}")
    return tuple(_file(path, where, f"{key}[{i}]", v) for i, v in enumerate(value))
