"""Comparisons rebuilt from a results store, without loading a model or running anything.

Leaderboards (and anything else computed after the fact) read runs back from the store
and feed them to the same :func:`tokenbench.report.build_rows` as the live table. Runs
are grouped into comparisons by everything in their configuration except the strategy,
its parameters and the budget: one group is one model (weights, dtype, device kind) on
one task with one seed and prompt template and one tokenbench version.

>>> budget_from_label("25.0%"), budget_from_label("64"), budget_from_label("all").value
(Budget(kind='fraction', value=0.25), Budget(kind='count', value=64), 1.0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tokenbench.budget import FULL, Budget
from tokenbench.errors import UsageError
from tokenbench.results import Comparison, RunResult
from tokenbench.store import RunInfo, Store

#: the configuration keys that vary inside one comparison
ROW_KEYS = ("strategy", "params", "budget", "position_policy")


def budget_from_label(label: str) -> Budget:
    """The :class:`Budget` whose ``label`` is ``label`` ("64", "25.0%", "all", "default")."""
    if label == "all":
        return FULL
    if label == "default":
        return Budget("default")
    if label.endswith("%"):
        return Budget("fraction", round(float(label[:-1]) / 100, 6))
    return Budget("count", int(label))


def group_key(config: dict[str, Any]) -> str:
    """Canonical JSON of a run's configuration without what differs between the rows of one comparison (strategy, parameters, budget, position ids)."""
    rest = {k: v for k, v in config.items() if k not in ROW_KEYS}
    return json.dumps(rest, sort_keys=True, default=str)


def group_runs(store: Store, run_ids: Sequence[str] | None = None) -> list[list[RunInfo]]:
    """Runs grouped into comparisons, groups ordered by their canonical key (stable)."""
    wanted = None if run_ids is None else set(run_ids)
    groups: dict[str, list[RunInfo]] = {}
    for run in store.runs():
        if wanted is None or run.run_id in wanted:
            groups.setdefault(group_key(run.config), []).append(run)
    return [sorted(groups[k], key=_run_order) for k in sorted(groups)]


def _run_order(run: RunInfo) -> tuple[int, str, str, str]:
    c = run.config
    return (0 if c.get("strategy") == "baseline" else 1, str(c.get("strategy")), str(c.get("budget")), run.run_id)


def strategy_defaults(registry: Any, name: str) -> dict[str, Any]:
    """The registered strategy's parameter defaults; none for a strategy no longer installed (every parameter is then shown)."""
    try:
        return dict(registry.load("strategies", name).defaults)
    except Exception:  # noqa: BLE001 - a plugin no longer installed: show every parameter
        return {}


def _task_kind(registry: Any, name: str, scores: list[float]) -> tuple[str, str]:
    try:
        cls = registry.load("tasks", name)
        return str(cls.metric_kind), str(cls.metric_name)
    except Exception:  # noqa: BLE001 - task plugin not installed: tell by the scores
        return ("binary" if all(s in (0.0, 1.0) for s in scores) else "continuous"), "score"


def environment_of(store: Store, runs: Sequence[RunInfo]) -> dict[str, Any]:
    """The recorded environment of the first run that has one (baseline first), else what
    the run configuration says; versions that were not recorded say so."""
    for run in runs:
        env = store.measurement(run.run_id, "environment")
        if env:
            return dict(env)
    config = runs[0].config if runs else {}
    model = config.get("model", {})
    return {
        "tokenbench": config.get("tokenbench", "not recorded"),
        "device": config.get("device_kind", "not recorded"),
        "device_name": model.get("device_name", "not recorded"),
        "torch": "not recorded",
        "transformers": "not recorded",
        "fvcore": "not recorded",
        "threads": "not recorded",
    }


def stored_timings(store: Store, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The timed loop's summaries (``timing:<hash>`` measurements) that every one of the runs has.

    Runs of one table are timed together (interleaved), so they share a measurement name;
    with several shared ones, the one over the most samples (then the first name) is used.
    """
    per_run = {rid: store.measurements(rid, prefix="timing:") for rid in run_ids}
    shared = sorted(set.intersection(*(set(v) for v in per_run.values()))) if per_run else []
    if not shared:
        return {}
    first = per_run[run_ids[0]]
    key = max(shared, key=lambda k: len(first[k].get("sample_ids", [])))
    return {rid: dict(v[key]) for rid, v in per_run.items()}


def comparison_from_store(store: Store, run_ids: Sequence[str] | None = None, registry: Any = None) -> Comparison:
    """One :class:`Comparison` from stored runs (all of one group; a baseline run is required).

    The samples are the baseline run's, in stored order; rows are paired with the
    baseline on the samples both answered, as in the live table.
    """
    from tokenbench.registry import get_registry

    groups = group_runs(store, run_ids)
    if not groups:
        raise UsageError(f"{store.path}: no runs" + (f" among {', '.join(run_ids)}" if run_ids else ""))
    if len(groups) > 1:
        raise UsageError(f"{store.path}: the runs belong to {len(groups)} different comparisons (model, task, seed or version differ); pass the runs of one")
    runs = groups[0]
    base = [r for r in runs if r.config.get("strategy") == "baseline"]
    if not base:
        raise UsageError(f"{store.path}: no baseline run among these runs; every comparison needs the unreduced model")
    reg = registry or get_registry()
    timings = stored_timings(store, [r.run_id for r in runs])
    results = []
    for info in runs:
        c = info.config
        records = store.samples(info.run_id)
        flops = store.measurement(info.run_id, "flops")
        results.append(
            RunResult(
                str(c.get("strategy")),
                dict(c.get("params") or {}),
                budget_from_label(str(c.get("budget"))),
                info.run_id,
                c,
                records,
                dict(flops["mean"]) if flops else None,
                resumed=0,
                defaults=strategy_defaults(reg, str(c.get("strategy"))),
                timing=timings.get(info.run_id),
            )
        )
    base_run = results[0]
    sample_ids = [r.sample_id for r in base_run.records]
    scores = [float(r.score) for run in results for r in run.records if r.score is not None]
    task = dict(base[0].config.get("task") or {})
    kind, metric_name = _task_kind(reg, str(task.get("name")), scores)
    model = dict(base[0].config.get("model") or {})
    return Comparison(model, task, kind, metric_name, environment_of(store, runs), results, sample_ids, {})
