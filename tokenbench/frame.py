"""Per-sample results as a pandas DataFrame (``tokenbench.results_frame``).

One row per run × sample, read from a results store or a results file (``*.jsonl.gz``,
see :mod:`tokenbench.results_file`); nothing is recomputed. pandas is
imported here only, so ``import tokenbench`` stays light.

Columns: ``run_id``, ``model`` (hub id or path), ``task`` (name), ``strategy``,
``params`` (canonical JSON), ``budget`` (label: "64", "25.0%", "all"), ``sample_id``,
``kind``, ``score``, ``prediction``, ``error``, ``tokens_in`` (visual tokens entering
the language model), ``layer_avg`` (visual tokens averaged over decoder layers),
``relevant_token_recall`` (only when some run recorded it, e.g. on ``shapes``) and
``answer_margin`` (top-1 minus top-2 logit of the first answer token).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    "run_id",
    "model",
    "task",
    "strategy",
    "params",
    "budget",
    "sample_id",
    "kind",
    "score",
    "prediction",
    "error",
    "tokens_in",
    "layer_avg",
    "relevant_token_recall",
    "answer_margin",
]


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def results_frame(store_path: str | os.PathLike[str], run_ids: Sequence[str] | None = None) -> Any:
    """A ``pandas.DataFrame`` of every per-sample result in the store or results file (or of ``run_ids``)."""
    import pandas as pd

    from tokenbench.results_file import open_results
    from tokenbench.store import StoreError

    if not Path(store_path).exists():
        raise StoreError(f"{store_path}: no results store there")
    store = open_results(store_path)
    wanted = None if run_ids is None else set(run_ids)
    rows: list[dict[str, Any]] = []
    recall = False
    try:
        for run in store.runs():
            if wanted is not None and run.run_id not in wanted:
                continue
            c = run.config
            head = {
                "run_id": run.run_id,
                "model": (c.get("model") or {}).get("model"),
                "task": (c.get("task") or {}).get("name"),
                "strategy": c.get("strategy"),
                "params": json.dumps(c.get("params") or {}, sort_keys=True),
                "budget": c.get("budget"),
            }
            for rec in store.samples(run.run_id):
                per_layer = rec.record.get("tokens_per_layer") or []
                row = {
                    **head,
                    "sample_id": rec.sample_id,
                    "kind": rec.kind,
                    "score": _num(rec.score),
                    "prediction": rec.prediction,
                    "error": rec.error,
                    "tokens_in": _num(per_layer[0]) if per_layer else math.nan,
                    "layer_avg": sum(per_layer) / len(per_layer) if per_layer else math.nan,
                    "relevant_token_recall": _num(rec.record.get("relevant_token_recall")),
                    "answer_margin": _num(rec.record.get("answer_margin")),
                }
                recall = recall or "relevant_token_recall" in rec.record
                rows.append(row)
    finally:
        store.close()
    columns = [c for c in COLUMNS if recall or c != "relevant_token_recall"]
    return pd.DataFrame(rows, columns=columns)
