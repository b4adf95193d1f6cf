"""What the Hugging Face task tests share: image cells, parquet fixtures, and a task run on them.

Imported by ``test_tasks_hf.py`` and ``test_tasks_documents.py`` (``tests/`` is on
``sys.path`` under pytest's default import mode).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import tokenbench
from tokenbench.task import Task

#: an ``image`` column as the hub stores it
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(colour: str = "red") -> dict[str, Any]:
    """An ``image`` cell as the hub stores it: ``{bytes, path}``."""
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> Path:
    """``rows`` as one parquet file at ``path`` (``schema``, or the one pyarrow infers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def task(name: str, path: Path | None = None, **options: Any) -> Task:
    """The registered task ``name`` on ``path`` (``None``: the Hugging Face cache)."""
    return tokenbench.get_registry().load("tasks", name)(str(path) if path else None, **options)


def run(t: Task, predictions: list[str]) -> tuple[list[Any], list[float], dict[str, float]]:
    """``t``'s samples, each scored against its prediction, and the aggregate."""
    samples = list(t.load())
    scores = [t.score(s, p) for s, p in zip(samples, predictions)]
    return samples, scores, t.aggregate(samples, scores, predictions)
