"""File-reading helpers the benchmark loaders share.

Every missing or malformed file becomes one :class:`~tokenbench.task.TaskDataError`
line that names the file and the layout the loader expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def data_error(path: Any, problem: str, layout: str) -> Exception:
    """A one-line TaskDataError: ``PATH: PROBLEM; expected layout: LAYOUT``."""
    from tokenbench.task import TaskDataError

    return TaskDataError(" ".join(f"{path}: {problem}; expected layout: {layout}".split()))


def need_dir(path: Any, layout: str) -> Path:
    p = Path(str(path))
    if not p.is_dir():
        raise data_error(p, "directory not found" if not p.exists() else "not a directory", layout)
    return p


def first_file(candidates: Iterable[Path], layout: str) -> Path:
    """The first candidate that is a file, else an error naming the first candidate."""
    candidates = list(candidates)
    for c in candidates:
        if c.is_file():
            return c
    raise data_error(candidates[0], "file not found", layout)


def read_json(path: Path, layout: str, *, lines: bool = False) -> Any:
    """A JSON document, or (``lines=True``) a list of JSON-lines objects."""
    if not path.is_file():
        raise data_error(path, "file not found", layout)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(path, f"cannot read ({exc})", layout) from None
    if not lines:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise data_error(path, f"not valid JSON (line {exc.lineno}: {exc.msg})", layout) from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise data_error(f"{path}:{lineno}", f"not valid JSON ({exc.msg})", layout) from None
    return out


def need_keys(obj: Any, keys: Iterable[str], where: Any, layout: str) -> None:
    if not isinstance(obj, dict):
        raise data_error(where, f"expected a JSON object, got {type(obj).__name__}", layout)
    missing = [k for k in keys if k not in obj]
    if missing:
        raise data_error(where, f"missing key(s) {', '.join(missing)}", layout)


def check_images(paths: Iterable[Path], layout: str) -> None:
    """Fail on the first missing image, saying how many are missing."""
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        raise data_error(missing[0], f"image not found ({len(missing)} image(s) missing)", layout)


def as_bool(value: Any, option: str) -> bool:
    """Coerce a task option given on the command line (``true``/``false``, ``1``/``0``...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"option {option}={value!r}: expected true or false")


def accuracy_by_kind(samples: Any, scores: Any) -> dict[str, float]:
    """Overall and per-``kind`` mean score, in percent (``accuracy``, ``KIND/accuracy``)."""
    out = {"accuracy": 100.0 * sum(scores) / max(len(scores), 1)}
    for kind in sorted({str(s.kind) for s in samples}):
        sc = [x for s, x in zip(samples, scores) if str(s.kind) == kind]
        out[f"{kind}/accuracy"] = 100.0 * sum(sc) / len(sc)
    return out


def choice_prompt(question: str, choices: Iterable[str], context: str = "") -> str:
    """LLaVA-1.5's multiple-choice prompt: ``[context\\n]question\\nA. ...\\nB. ...\\nAnswer with ...``."""
    opts = "\n".join(f"{'ABCDEFGHIJ'[i]}. {c}" for i, c in enumerate(choices))
    head = f"{context}\n" if context else ""
    return f"{head}{question}\n{opts}\nAnswer with the option's letter from the given choices directly."
