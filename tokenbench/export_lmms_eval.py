"""``tokenbench runs --export DIR --format lmms-eval``: stored runs as lmms-eval's logs.

The files follow what lmms-eval v0.7.2 (commit 75571cfe) writes with ``--output_path DIR
--log_samples`` (``EvaluationTracker.save_results_samples`` and
``save_results_aggregated`` in ``lmms_eval/loggers/evaluation_tracker.py``, the
``example`` dict of ``lmms_eval/evaluator.py``), so tools that read lmms-eval logs read
these. One tokenbench run (strategy × budget × task) is one lmms-eval "task", named
``{task}__{strategy}__{budget}`` (lmms-eval's sanitising: every non-word character
becomes ``_``, ``%`` becomes ``pct``; a run id is appended when two runs would share a
name):

* ``DIR/{model}/{date}_samples_{name}.jsonl``, one line per scored sample: ``doc_id``
  (the sample's position), ``target`` (the first reference answer, or the list of them,
  as ``str``; ``null`` when the task's data cannot be loaded here), ``filtered_resps``
  (the prediction; lmms-eval drops ``resps`` when it equals ``filtered_resps``, as it
  does here), ``doc_hash`` (SHA-256 of the sample id: the image and document are not in
  the store), ``input`` (the prompt as the model saw it), the metric with the sample's
  score, and ``tokenbench`` (sample id, kind, run id, visual tokens into the language
  model, the sample's cluster when the task declares one);
* ``DIR/{model}/{date}_results.json``: lmms-eval's aggregate block, ``results`` (per name:
  ``alias``, ``METRIC,none`` the mean score, ``METRIC_stderr,none`` its standard error,
  ``METRIC_stderr_clustered,none`` when the samples come in clusters, ``samples``),
  ``configs`` (the tokenbench run configuration), ``versions``, ``n-shot``,
  ``higher_is_better``, ``n-samples``, ``config`` and ``date``.

``{model}`` is the model's name with lmms-eval's ``sanitize_model_name`` applied;
``{date}`` is the newest run's start (UTC, ``%Y%m%d_%H%M%S``), so exporting an unchanged
store writes the same files. Failed samples have no score and are left out (counted in
:class:`ExportSummary`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenbench.errors import StoreError
from tokenbench.leaderboard import model_name
from tokenbench.store import RunInfo, SampleRecord, Store

LMMS_EVAL_VERSION = "0.7.2"
FILTER = "none"  # lmms-eval's filter key when a task defines no filter: the response as generated

#: sample id -> reference answers, for one run's task configuration (None: the data is not here)
TargetsFor = Callable[[Mapping[str, Any]], Mapping[str, Sequence[str]] | None]


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_lmms_eval` wrote."""

    files: list[Path]
    samples: int
    skipped_errors: int
    runs_without_targets: int


def sanitize_model_name(name: str) -> str:
    """lmms-eval's ``sanitize_model_name``: the last two path parts, reserved characters as ``__``.

    >>> sanitize_model_name("llava-hf/llava-1.5-7b-hf"), sanitize_model_name("reference")
    ('llava-hf__llava-1.5-7b-hf', 'reference')
    """
    last_two = "/".join(name.split("/")[-2:])
    return re.sub(r"[\"<>:/\|\\?\*\[\]]+", "__", last_two)


def run_task_name(task: str, strategy: str, budget: str) -> str:
    """The lmms-eval task name of one run: task, strategy label and budget, word characters only.

    >>> run_task_name("pope", "fastv:k=3", "25.0%")
    'pope__fastv_k_3__25_0pct'
    """
    return re.sub(r"\W", "_", f"{task}__{strategy}__{budget.replace('%', 'pct')}")


def metric_key(metric_name: str) -> str:
    """A task's metric in words as an lmms-eval metric key.

    >>> metric_key("accuracy (yes/no)"), metric_key("exact match")
    ('accuracy_yes_no', 'exact_match')
    """
    return re.sub(r"\W+", "_", metric_name.lower()).strip("_") or "score"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _target(answers: Sequence[str] | None) -> str | None:
    if answers is None:
        return None
    return str(answers[0]) if len(answers) == 1 else str(list(answers))


def sample_line(run_id: str, rec: SampleRecord, metric: str, answers: Sequence[str] | None) -> dict[str, Any]:
    """One line of ``samples_{name}.jsonl`` for a scored record."""
    extras: dict[str, Any] = {"sample_id": rec.sample_id, "kind": rec.kind, "run_id": run_id}
    tokens = rec.record.get("tokens_per_layer") or []
    extras["visual_tokens_llm_input"] = tokens[0] if tokens else rec.record.get("num_visual")
    if "cluster" in rec.record:
        extras["cluster"] = rec.record["cluster"]
    return {
        "doc_id": rec.position,
        "target": _target(answers),
        "filtered_resps": rec.prediction or "",
        "doc_hash": _hash(rec.sample_id),
        "input": rec.prompt or "",
        metric: rec.score,
        "tokenbench": extras,
    }


def _aggregate(metric: str, scores: list[float], clusters: list[str] | None) -> dict[str, Any]:
    from tokenbench.stats_clustered import clustered_standard_error, is_clustered

    n = len(scores)
    mean = sum(scores) / n if n else None
    stderr: float | str = "N/A"
    if n > 1 and mean is not None:
        stderr = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)
    out: dict[str, Any] = {f"{metric},{FILTER}": mean, f"{metric}_stderr,{FILTER}": stderr}
    if clusters is not None and n > 1 and is_clustered(clusters):
        out[f"{metric}_stderr_clustered,{FILTER}"] = clustered_standard_error(scores, clusters)
    return out


def _date_id(runs: Sequence[RunInfo]) -> str:
    newest = max(run.created for run in runs)
    return datetime.datetime.fromtimestamp(newest, tz=datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")


def _names(runs: Sequence[RunInfo], label: Callable[[RunInfo], str]) -> dict[str, str]:
    """run id -> lmms-eval task name, unique among ``runs`` (the run id appended on a clash)."""
    base = {r.run_id: run_task_name(str(r.config.get("task", {}).get("name", "task")), label(r), str(r.config.get("budget"))) for r in runs}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    return {rid: name if counts[name] == 1 else f"{name}__{rid}" for rid, name in base.items()}


def export_lmms_eval(
    store: Store,
    directory: str | Path,
    *,
    label: Callable[[RunInfo], str],
    metric_name: Callable[[str], str],
    targets: TargetsFor,
) -> ExportSummary:
    """Write every run of ``store`` under ``directory`` as lmms-eval would have logged it.

    ``label`` gives a run's strategy label, ``metric_name`` a task name's metric in words,
    ``targets`` the reference answers of a run's task (see :data:`TargetsFor`).
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: exists and is not a directory; --format lmms-eval writes a folder of files, pass --export DIR")
    runs = store.runs()
    if not runs:
        raise StoreError(f"{store.path}: no runs to export")
    by_model: dict[str, list[RunInfo]] = {}
    for run in runs:
        by_model.setdefault(sanitize_model_name(model_name(run.config.get("model", {}))), []).append(run)
    files: list[Path] = []
    written = skipped = missing = 0
    answers_by_task: dict[str, Mapping[str, Sequence[str]] | None] = {}
    for model, model_runs in sorted(by_model.items()):
        folder = out / model
        folder.mkdir(parents=True, exist_ok=True)
        date_id, names = _date_id(model_runs), _names(model_runs, label)
        results: dict[str, Any] = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {}}
        for run in model_runs:
            name, task = names[run.run_id], dict(run.config.get("task") or {})
            task_key = json.dumps(task, sort_keys=True, default=str)
            if task_key not in answers_by_task:
                answers_by_task[task_key] = targets(task)
            answers = answers_by_task[task_key]
            missing += answers is None
            metric = metric_key(metric_name(str(task.get("name"))))
            records = store.samples(run.run_id)
            scored = [r for r in records if r.error is None and r.score is not None]
            skipped += len(records) - len(scored)
            path = folder / f"{date_id}_samples_{name}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for rec in scored:
                    line = sample_line(run.run_id, rec, metric, None if answers is None else answers.get(rec.sample_id))
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            files.append(path)
            written += len(scored)
            clusters = [str(r.record.get("cluster", f"sample:{r.sample_id}")) for r in scored] if any("cluster" in r.record for r in scored) else None
            results["results"][name] = {"alias": name, **_aggregate(metric, [float(r.score or 0.0) for r in scored], clusters), "samples": len(scored)}
            results["configs"][name] = {"task": name, "tokenbench_run_id": run.run_id, "tokenbench_config": run.config}
            results["versions"][name] = str(run.config.get("tokenbench", "not recorded"))
            results["n-shot"][name] = 0
            results["higher_is_better"][name] = {metric: True}
            results["n-samples"][name] = {"original": len(records), "effective": len(scored)}
        results["config"] = {"model": "tokenbench", "model_args": model, "format": f"lmms-eval {LMMS_EVAL_VERSION} --log_samples"}
        results["date"] = max(run.created for run in model_runs)
        path = folder / f"{date_id}_results.json"
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        files.append(path)
    return ExportSummary(files, written, skipped, missing)


def task_targets(registry: Any) -> TargetsFor:
    """:data:`TargetsFor` that loads a run's task through ``registry``; ``None`` when it cannot be loaded here."""

    def targets(task: Mapping[str, Any]) -> Mapping[str, Sequence[str]] | None:
        try:
            cls = registry.load("tasks", str(task.get("name")))
            loaded = cls(task.get("path"), **dict(task.get("options") or {}))
            return {s.id: tuple(s.answers) for s in loaded.load()}
        except Exception:  # noqa: BLE001 - data or plugin not here: the lines say target null
            return None

    return targets


def task_metric_name(registry: Any) -> Callable[[str], str]:
    """A task name's metric in words (``score`` for a task no longer installed)."""

    def metric(name: str) -> str:
        try:
            return str(registry.load("tasks", name).metric_name)
        except Exception:  # noqa: BLE001 - plugin not installed
            return "score"

    return metric
