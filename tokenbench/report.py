"""Comparison tables from stored runs: paired statistics against the baseline.

Every row is one strategy at one budget. Differences are paired over the samples both
the row and the baseline answered; p-values are McNemar's exact test (binary scores)
or a paired permutation test (continuous), adjusted over the table's family of
comparisons (Holm by default). When the task declares clusters of related samples
(their records carry ``cluster``) and one holds more than one sample, the test is the
cluster sign-flip permutation test and the intervals are cluster-robust
(:mod:`tokenbench.stats_clustered`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenbench import stats, stats_clustered
from tokenbench.report_notes import footnotes
from tokenbench.results import Comparison, RunResult
from tokenbench.text_table import TABLE_WIDTH, fit_width, plain_table

POWER_MARGIN = 0.02  # the difference (2 points) the power note asks about


def _scores(run: RunResult, ids: Sequence[str]) -> dict[str, float]:
    return {r.sample_id: float(r.score) for r in run.records if r.error is None and r.score is not None and r.sample_id in ids}


def cluster_map(cmp: Comparison) -> dict[str, str]:
    """Each sample's cluster, as the task recorded it (``record["cluster"]``); samples without one are absent."""
    return {r.sample_id: str(r.record["cluster"]) for run in cmp.runs for r in run.records if "cluster" in r.record}


def _cluster_ids(clusters: dict[str, str], ids: Sequence[str]) -> list[tuple[str, str]]:
    """The cluster of each of ``ids``; a sample without one is a cluster of its own."""
    return [("cluster", clusters[i]) if i in clusters else ("sample", i) for i in ids]


def _clip(interval: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    return max(low, interval[0]), min(high, interval[1])


def _mean_list(rows: list[list[int]]) -> list[float]:
    if not rows:
        return []
    width = min(len(r) for r in rows)
    return [float(np.mean([r[i] for r in rows])) for i in range(width)]


def build_rows(cmp: Comparison, *, adjust: str = "holm", kind: str | None = None) -> list[dict[str, Any]]:
    """One dict per run, with the keys of ``--format json``'s ``results``."""
    binary = cmp.metric_kind == "binary"
    ids = [i for i, k in _kinds(cmp).items() if kind is None or k == kind]
    base = next(r for r in cmp.runs if r.strategy == "baseline")
    base_scores = _scores(base, ids)
    base_flops = (base.flops or {}).get("total_prefill")
    base_ttft = ((base.timing or {}).get("latency_ms") or {}).get("ttft_median")
    clusters = cluster_map(cmp)
    rows: list[dict[str, Any]] = []
    for run in cmp.runs:
        sc = _scores(run, ids)
        ok = [r for r in run.records if r.error is None and r.sample_id in ids]
        values = np.array(list(sc.values()), dtype=float)
        n = len(values)
        acc = float(values.mean()) if n else float("nan")
        scored = _cluster_ids(clusters, list(sc))
        if n == 0:
            ci = (float("nan"), float("nan"))
        elif stats_clustered.is_clustered(scored):
            ci = _clip(stats_clustered.cluster_robust_interval(values, scored), 0.0, 1.0)
        elif binary:
            ci = stats.wilson_interval(int(values.sum()), n)
        else:
            ci = stats.bootstrap_interval(values)
        row: dict[str, Any] = {
            "strategy": run.strategy,
            "label": run.label,
            "params": run.params,
            "budget": run.budget.label,
            "run_id": run.run_id,
            "n": n,
            "errors": sum(1 for r in run.records if r.error is not None and r.sample_id in ids),
            "accuracy": acc,
            "ci95": list(ci),
            "delta_vs_baseline": None,
            "delta_ci95": None,
            "p_value": None,
            "p_adjusted": None,
            "power_note": None,
            "clusters": None,
            "position_policy": run.position_policy,
        }
        common = [i for i in ids if i in sc and i in base_scores]
        if run is not base and common:
            a = np.array([sc[i] for i in common])
            b = np.array([base_scores[i] for i in common])
            paired = _cluster_ids(clusters, common)
            if stats_clustered.is_clustered(paired):
                diff = stats_clustered.clustered_paired_difference(a, b, paired)
            else:
                diff = stats.paired_difference(a, b, binary=binary)
            delta_ci = list(_clip((diff.low, diff.high), -1.0, 1.0))
            row.update(delta_vs_baseline=diff.difference, delta_ci95=delta_ci, p_value=diff.p_value, test=diff.test, clusters=diff.clusters)
            discord = max(float(np.mean(a != b)), 1.0 / len(common))
            if diff.p_value < 0.05:
                row["power_note"] = None
            elif diff.clusters is not None:  # clustered: the independent units are fewer, the detectable difference larger
                deff = max(1.0, stats_clustered.design_effect(a - b, paired))  # a caveat never credits a design effect below 1
                row["power_note"] = stats.power_note(len(common), discord, POWER_MARGIN, clusters=diff.clusters, design_effect=deff)
            else:
                row["power_note"] = stats.power_note(len(common), discord, POWER_MARGIN)
        per_layer = [r.record["tokens_per_layer"] for r in ok]
        row["visual_tokens_llm_input"] = float(np.mean([p[0] for p in per_layer])) if per_layer else None
        row["visual_tokens_per_layer"] = _mean_list(per_layer)
        row["visual_tokens_layer_avg"] = float(np.mean([np.mean(p) for p in per_layer])) if per_layer else None
        row["merged_tokens"] = float(np.mean([sum(r.record["merged"].values()) for r in ok])) if ok else None
        if ok and "relevant_token_recall" in ok[0].record:
            row["relevant_token_recall"] = float(np.mean([r.record["relevant_token_recall"] for r in ok]))
        row["flops"] = run.flops
        row["flops_prefill"] = (run.flops or {}).get("total_prefill")
        row["flops_rel_baseline"] = row["flops_prefill"] / base_flops if row["flops_prefill"] and base_flops else None
        if run.timing is not None:  # the timed loop (--timing-samples); see tokenbench.timing
            lat = run.timing.get("latency_ms") or {}
            row["latency_ms"] = lat
            row["peak_memory_mb"] = run.timing.get("peak_memory_mb")
            row["ttft_speedup"] = base_ttft / lat["ttft_median"] if base_ttft and lat.get("ttft_median") else None
            if run.timing.get("error"):
                row["timing_error"] = run.timing["error"]
        rows.append(row)
    tested = [i for i, r in enumerate(rows) if r["p_value"] is not None]
    adjusted = stats.adjust([rows[i]["p_value"] for i in tested], adjust)  # type: ignore[arg-type]
    for i, p in zip(tested, adjusted):
        rows[i]["p_adjusted"] = p
    return rows


def _kinds(cmp: Comparison) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for run in cmp.runs:
        for r in run.records:
            kinds.setdefault(r.sample_id, r.kind or "")
    return {i: kinds.get(i, "") for i in cmp.sample_ids}


def kinds_of(cmp: Comparison) -> list[str]:
    return sorted(set(_kinds(cmp).values()))


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _p(x: float | None) -> str:
    if x is None:
        return "—"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _n(r: dict[str, Any]) -> str:
    return str(r["n"]) + (f" ({r['errors']} err)" if r["errors"] else "")


def _delta(r: dict[str, Any]) -> str:
    if r["delta_vs_baseline"] is None:
        return "—"
    return f"{100 * r['delta_vs_baseline']:+.1f} [{_pct(r['delta_ci95'][0])}, {_pct(r['delta_ci95'][1])}]"


def _ratio(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}×"


def _ttft(r: dict[str, Any]) -> str:
    return "failed" if r.get("timing_error") else _ratio(r.get("ttft_speedup"), 2)


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Human-readable cells; every column header says its unit (``--format md``, ``--wide`` and the leaderboards)."""
    out = []
    for r in rows:
        lo, hi = r["ci95"]
        cells = {
            "strategy": r["label"],
            "budget": r["budget"],
            "n": _n(r),
            "acc % [95% CI]": f"{_pct(r['accuracy'])} [{_pct(lo)}, {_pct(hi)}]",
            "Δ vs base, pts [95% CI]": _delta(r),
            "p (adj.)": _p(r["p_adjusted"]),
            "tokens in / layer-avg": "—"
            if r["visual_tokens_llm_input"] is None
            else f"{r['visual_tokens_llm_input']:.0f} / {r['visual_tokens_layer_avg']:.1f}",
            "prefill FLOPs vs base": _ratio(r["flops_rel_baseline"], 3),
        }
        if "latency_ms" in r:
            cells["TTFT vs base"] = _ttft(r)
        if "relevant_token_recall" in r:
            cells["relevant recall %"] = _pct(r["relevant_token_recall"])
        out.append(cells)
    return out


def compact_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The terminal table's cells: :func:`display_rows` without the accuracy interval, with short headers.

    The legend (:data:`COMPACT_LEGEND`) names what each short header means; ``--wide``
    shows :func:`display_rows`.
    """
    out = []
    for r in rows:
        cells = {
            "strategy": r["label"],
            "budget": r["budget"],
            "n": _n(r),
            "acc %": _pct(r["accuracy"]),
            "Δ pts [95% CI]": _delta(r),
            "p adj.": _p(r["p_adjusted"]),
            "tok in/avg": "—" if r["visual_tokens_llm_input"] is None else f"{r['visual_tokens_llm_input']:.0f}/{r['visual_tokens_layer_avg']:.0f}",
            "FLOPs/base": _ratio(r["flops_rel_baseline"], 3),
        }
        if "latency_ms" in r:
            cells["TTFT/base"] = _ttft(r)
        if "relevant_token_recall" in r:
            cells["recall %"] = _pct(r["relevant_token_recall"])
        out.append(cells)
    return out


COMPACT_LEGEND = (
    "columns: acc % = accuracy (its 95% CI: --wide); Δ pts = paired difference to the baseline in percentage points; "
    "p adj. = its adjusted p; tok in/avg = visual tokens entering the language model / their layer average; "
    "FLOPs/base, TTFT/base = ratios to the baseline; recall % = relevant tokens kept; long names end in …: --wide"
)


def render(cmp: Comparison, fmt: str = "table", *, adjust: str = "holm", by_kind: bool = False, per_sample: bool = False, wide: bool = False) -> str:
    """The comparison as ``fmt``; ``table`` fits :data:`TABLE_WIDTH` columns unless ``wide``."""
    rows = build_rows(cmp, adjust=adjust)
    if fmt == "json":
        return to_json(cmp, rows, adjust=adjust, by_kind=by_kind, per_sample=per_sample)
    if fmt == "csv":
        return _csv(rows, cmp, by_kind, adjust)
    from tabulate import tabulate

    compact = fmt == "table" and not wide
    tablefmt = "github" if fmt == "md" else "simple"

    def table(rs: list[dict[str, Any]]) -> str:
        if compact:
            return plain_table(fit_width(compact_rows(rs), "strategy"))
        return str(tabulate(display_rows(rs), headers="keys", tablefmt=tablefmt, disable_numparse=True))

    parts = [table(rows)]
    if by_kind:
        for kind in kinds_of(cmp):
            krows = build_rows(cmp, adjust=adjust, kind=kind)
            title = f"kind = {kind}"
            parts.append(("### " if fmt == "md" else "") + title)
            parts.append(table(krows))
    prefix = "- " if fmt == "md" else "  "
    notes = footnotes(cmp, rows, adjust)
    if compact:
        notes = [COMPACT_LEGEND, *notes]
        parts.append("\n".join(textwrap.fill(n, TABLE_WIDTH, initial_indent=prefix, subsequent_indent=prefix + "  ", break_on_hyphens=False) for n in notes))
    else:
        parts.append("\n".join(prefix + n for n in notes))
    return "\n\n".join(parts) + "\n"


def to_json(cmp: Comparison, rows: list[dict[str, Any]], *, adjust: str, by_kind: bool, per_sample: bool) -> str:
    obj: dict[str, Any] = {
        "model": cmp.model,
        "task": cmp.task,
        "device": cmp.environment.get("device"),
        "environment": cmp.environment,
        "p_adjustment": adjust,
        "flops_convention": "FLOPs = 2 x multiply-adds (fvcore), causal attention not discounted",
        "results": rows,
    }
    for row in rows:
        row["task_metrics"] = cmp.task_metrics.get(row["run_id"], {})
    if by_kind:
        obj["by_kind"] = {k: build_rows(cmp, adjust=adjust, kind=k) for k in kinds_of(cmp)}
    if per_sample:
        obj["per_sample"] = {
            run.run_id: [
                {
                    "id": r.sample_id,
                    "kind": r.kind,
                    "prompt": r.prompt,
                    "prediction": r.prediction,
                    "score": r.score,
                    "error": r.error,
                    "kept": r.record.get("kept"),
                    "tokens_per_layer": r.record.get("tokens_per_layer"),
                    "segments": r.record.get("segments"),
                }
                for r in run.records
            ]
            for run in cmp.runs
        }
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def json_safe(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN and infinities to null.

    >>> json_safe({'a': float('nan'), 'b': (1, 2.5)})
    {'a': None, 'b': [1, 2.5]}
    """
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _csv(rows: list[dict[str, Any]], cmp: Comparison, by_kind: bool, adjust: str) -> str:
    buf = io.StringIO()
    cols = [
        "strategy",
        "label",
        "budget",
        "n",
        "errors",
        "accuracy",
        "ci95_low",
        "ci95_high",
        "delta_vs_baseline",
        "p_value",
        "p_adjusted",
        "visual_tokens_llm_input",
        "visual_tokens_layer_avg",
        "flops_prefill",
        "flops_rel_baseline",
        "kind",
    ]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    groups = [(None, rows)] + ([(k, build_rows(cmp, adjust=adjust, kind=k)) for k in kinds_of(cmp)] if by_kind else [])
    for kind, rs in groups:
        for r in rs:
            writer.writerow({**r, "ci95_low": r["ci95"][0], "ci95_high": r["ci95"][1], "kind": kind or "all"})
    return buf.getvalue()
