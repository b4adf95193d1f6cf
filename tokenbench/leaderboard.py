"""`tokenbench leaderboard`: markdown leaderboards from a results store or results file.

One file per comparison group (model × task, with its dtype, seed and version): the
unreduced model, then every budget with its strategies ranked by accuracy, with the
same statistics as ``tokenbench compare`` (computed by :func:`tokenbench.report.build_rows`
from the stored per-sample results), then a provenance block. Everything comes from the
store: regenerating from the same store gives byte-for-byte the same files. Names that
plugins provide are escaped, so they cannot break the table (pipes, backticks, HTML,
newlines).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

from tokenbench.errors import UsageError
from tokenbench.store import DEFAULT_STORE

#: where ``tokenbench leaderboard`` writes without ``--out``: not ``leaderboards/``, whose
#: committed files a run from the repository's root would otherwise overwrite
DEFAULT_OUT = "tokenbench-leaderboards"

_ESCAPES = {"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "#": "\\#", "<": "&lt;", ">": "&gt;", "&": "&amp;"}


def md_escape(text: Any) -> str:
    """Plain text safe inside a markdown table cell or heading.

    >>> md_escape("evil|name`<b>\\nx")
    'evil\\\\|name\\\\`&lt;b&gt; x'
    """
    out = []
    for ch in str(text):
        if ch in "\r\n\t" or unicodedata.category(ch).startswith("C"):
            out.append(" ")
        else:
            out.append(_ESCAPES.get(ch, ch))
    return "".join(out)


def add_parser(sub: Any) -> None:
    lb = sub.add_parser(
        "leaderboard",
        help="render markdown leaderboards from a results store or results file",
        description="One markdown file per model × task from the stored runs, byte-for-byte reproducible.",
    )
    lb.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="FILE.db|FILE.jsonl.gz",
        help="results database (from tokenbench compare) or results file (*.jsonl.gz, from tokenbench runs --export)",
    )
    lb.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output folder (default: {DEFAULT_OUT}, a new folder: the repository's published leaderboards/ is rewritten only when named)",
    )
    lb.add_argument("--runs", help="only these run ids (comma list); default: every run in the store")
    lb.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    if not Path(args.store).is_file():
        raise UsageError(f"{args.store}: no results store or results file there; run 'tokenbench compare' first or pass --store PATH")
    run_ids = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    before = {path: path.read_bytes() for path in Path(args.out).glob("*.md")}
    for path in write_leaderboards(args.store, args.out, run_ids):
        what = "wrote" if path not in before else "unchanged:" if before[path] == path.read_bytes() else "replaced"
        print(f"tokenbench: {what} {path}", file=sys.stderr)
    return 0


def write_leaderboards(store_path: str | Path, out_dir: str | Path, run_ids: list[str] | None = None) -> list[Path]:
    """Write one markdown file per comparison group of a store or results file; returns the paths written."""
    from tokenbench.registry import get_registry
    from tokenbench.results_file import open_results
    from tokenbench.stored import comparison_from_store, group_runs

    store = open_results(store_path)
    out = Path(out_dir)
    written: list[Path] = []
    try:
        groups = group_runs(store, run_ids)
        if not groups:
            raise UsageError(f"{store_path}: no runs to publish")
        reg = get_registry()
        names: dict[str, int] = {}
        for runs in groups:
            if not any(r.config.get("strategy") == "baseline" for r in runs):
                print(f"tokenbench: warning: skipping {len(runs)} run(s) without a baseline run ({runs[0].run_id}, ...)", file=sys.stderr)
                continue
            cmp = comparison_from_store(store, [r.run_id for r in runs], reg)
            base = f"{slug(model_name(cmp.model))}--{slug(str(cmp.task.get('name')))}"
            names[base] = names.get(base, 0) + 1
            stem = base if names[base] == 1 else f"{base}--{runs[0].run_id}"
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{stem}.md"
            path.write_text(render_leaderboard(cmp, store, runs), encoding="utf-8")
            written.append(path)
    finally:
        store.close()
    return written


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unnamed"


def model_name(model: dict[str, Any]) -> str:
    """``reference`` for the embedded model, a local folder's name, or the hub id."""
    name = str(model.get("model", "?"))
    path = Path(name)
    return path.name if path.is_absolute() or name.startswith(".") else name


def _budget_order(label: str) -> tuple[int, float, str]:
    """Token counts ascending, then fractions ascending, then anything else."""
    if label.isdigit():
        return (0, float(label), label)
    try:
        return (1, float(label[:-1]), label) if label.endswith("%") else (2, 0.0, label)
    except ValueError:
        return (2, 0.0, label)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_leaderboard(cmp: Any, store: Any, runs: list[Any]) -> str:
    from tokenbench.report import build_rows, display_rows

    rows = build_rows(cmp, adjust="holm")
    cells = display_rows(rows)
    recall = any("relevant_token_recall" in r for r in rows)
    timed = any("latency_ms" in r for r in rows)
    headers = (
        ["rank", "strategy", "n", "acc % [95% CI]", "Δ vs base, pts [95% CI]", "p (Holm)", "visual tokens in / layer-avg", "prefill FLOPs vs base"]
        + (["TTFT vs base"] if timed else [])
        + (["relevant recall %"] if recall else [])
    )

    def line(rank: str, r: dict[str, Any], c: dict[str, str]) -> list[str]:
        out = [
            rank,
            md_escape(r["label"]),
            c["n"],
            c["acc % [95% CI]"],
            c["Δ vs base, pts [95% CI]"],
            c["p (adj.)"],
            c["tokens in / layer-avg"],
            c["prefill FLOPs vs base"],
        ] + ([c.get("TTFT vs base", "—")] if timed else [])
        return out + ([c.get("relevant recall %", "—")] if recall else [])

    model, task = model_name(cmp.model), str(cmp.task.get("name"))
    n = len(cmp.sample_ids)
    test = "McNemar's exact test" if cmp.metric_kind == "binary" else "a paired sign-flip permutation test"
    tested = sum(r["p_value"] is not None for r in rows)
    parts = [
        "<!-- generated by `tokenbench leaderboard` from a results store; regenerate, do not edit -->",
        f"# {md_escape(model)} on {md_escape(task)}",
        "",
        f"Metric: {md_escape(cmp.metric_name)}, on {n} samples. Within each budget, strategies are ranked by accuracy. "
        f"Δ and p compare each strategy with the unreduced model on the same samples ({test}); p is Holm-adjusted over the "
        f"{tested} comparisons in this file. Accuracy intervals are {'Wilson' if cmp.metric_kind == 'binary' else 'bootstrap'} 95%. "
        "Visual tokens: entering the language model / averaged over decoder layers, measured in the forward pass. "
        "FLOPs: mean prefill FLOPs (vision + projector + language model; FLOPs = 2 × multiply-adds counted by fvcore) "
        "relative to the unreduced model."
        + (" TTFT vs base: the unreduced model's median time to first token over the row's (speed-up; see provenance)." if timed else ""),
    ]
    base_idx = [i for i, r in enumerate(rows) if r["strategy"] == "baseline"]
    parts += ["", "## Unreduced model", ""] + _table(headers, [line("—", rows[i], cells[i]) for i in base_idx])
    budgets = sorted({r["budget"] for i, r in enumerate(rows) if i not in base_idx}, key=_budget_order)
    for budget in budgets:
        idx = _ranked(rows, budget, base_idx)
        ranked, prev, rank = [], None, 0
        for pos, i in enumerate(idx, 1):
            if _acc(rows[i]) != prev:
                rank, prev = pos, _acc(rows[i])
            ranked.append(line(str(rank), rows[i], cells[i]))
        kind = _budget_order(budget)[0]
        title = f"keep {md_escape(budget)} of the visual tokens" if kind == 1 else f"{budget} visual tokens" if kind == 0 else md_escape(budget)
        parts += ["", f"## Budget: {title}", ""] + _table(headers, ranked)
    parts += by_kind_section(cmp, rows, base_idx, budgets)
    notes = sorted({f"{md_escape(r['label'])} @ {md_escape(r['budget'])}: {r['power_note']}" for r in rows if r.get("power_note")})
    if notes:
        parts += ["", "Power: " + notes[0] + (f" ({len(notes) - 1} more row(s) likewise)" if len(notes) > 1 else "")]
    parts += ["", "## Provenance", ""] + provenance(cmp, store, runs, rows)
    return "\n".join(parts) + "\n"


def by_kind_section(cmp: Any, rows: list[dict[str, Any]], base_idx: list[int], budgets: list[str]) -> list[str]:
    """Accuracy per question kind (benchmark category), one row per strategy and budget,
    in the order of the ranked tables; nothing when the task has a single kind."""
    from tokenbench.report import build_rows, kinds_of

    kinds = [k for k in kinds_of(cmp) if k]
    if len(kinds) < 2:
        return []
    per_kind = {k: {r["run_id"]: r for r in build_rows(cmp, adjust="holm", kind=k)} for k in kinds}
    order = list(base_idx) + [i for budget in budgets for i in _ranked(rows, budget, base_idx)]
    headers = ["strategy", "budget", "all"] + [f"{md_escape(k)} (n={next(iter(per_kind[k].values()))['n']})" for k in kinds]
    table = []
    for i in order:
        r = rows[i]
        accs = [_acc(r)] + [_acc(per_kind[k][r["run_id"]]) if r["run_id"] in per_kind[k] else -1.0 for k in kinds]
        table.append([md_escape(r["label"]), md_escape(r["budget"])] + [f"{100 * a:.1f}" if a >= 0 else "—" for a in accs])
    return [
        "",
        "## Accuracy by kind (%)",
        "",
        "Per question kind (the task's categories), same samples; significance per kind: `tokenbench compare --by kind`.",
        "",
    ] + _table(headers, table)


def _ranked(rows: list[dict[str, Any]], budget: str, base_idx: list[int]) -> list[int]:
    """Indices of the rows at ``budget``, best accuracy first (ties by label, then run id)."""
    idx = [i for i, r in enumerate(rows) if r["budget"] == budget and i not in base_idx]
    return sorted(idx, key=lambda i: (-_acc(rows[i]), rows[i]["label"], rows[i]["run_id"]))


def _acc(row: dict[str, Any]) -> float:
    a = row["accuracy"]
    return a if isinstance(a, float) and a == a else -1.0


def provenance(cmp: Any, store: Any, runs: list[Any], rows: list[dict[str, Any]]) -> list[str]:
    from tokenbench.report_notes import position_note

    env, model, cfg = cmp.environment, cmp.model, runs[0].config
    envs = {json.dumps({k: v for k, v in (store.measurement(r.run_id, "environment") or {}).items()}, sort_keys=True) for r in runs}
    newest = max(r.created for r in runs)
    date = _dt.datetime.fromtimestamp(newest, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{k} {md_escape(env.get(k, 'not recorded'))}" for k in ("python", "torch", "transformers", "fvcore", "numpy", "scipy") if k in env)
    weights = model.get("weights_sha256") or model.get("revision") or "not recorded"
    options = json.dumps(cmp.task.get("options", {}), sort_keys=True)
    lines = [
        f"- tokenbench {md_escape(cfg.get('tokenbench', env.get('tokenbench')))}; {versions}",
        f"- device: {md_escape(cfg.get('device_kind'))} ({md_escape(env.get('device_name', model.get('device_name')))}), "
        f"dtype {md_escape(model.get('dtype'))}, {md_escape(model.get('attention'))} attention, {md_escape(env.get('threads', '?'))} threads"
        + (f", processor {md_escape(env['processor'])}" if env.get("processor") else ""),
        f"- model: {md_escape(model.get('model'))} (model_type {md_escape(model.get('model_type'))}, weights {md_escape(weights)})",
        f"- task: {md_escape(cmp.task.get('name'))}"
        + (f" from {md_escape(cmp.task['path'])}" if cmp.task.get("path") else "")
        + f", options {md_escape(options)}; seed {md_escape(cfg.get('seed'))}; max new tokens {md_escape(cfg.get('max_new_tokens'))}",
        f"- samples: {len(cmp.sample_ids)} (the baseline run's); metric: {md_escape(cmp.metric_name)} ({cmp.metric_kind})",
        f"- {md_escape(position_note(cmp))}",
        f"- newest run: {date}",
    ]
    timing = next((r.timing for r in cmp.runs if r.strategy == "baseline" and r.timing), None)
    if timing and (timing.get("latency_ms") or {}).get("ttft_median") is not None:
        st, tenv = timing.get("settings", {}), timing.get("environment", {})
        lines.append(
            f"- timing: baseline TTFT median {timing['latency_ms']['ttft_median']:.1f} ms over {len(timing.get('sample_ids', []))} samples, "
            f"batch 1, {md_escape(st.get('warmup'))} warm-up runs, strategies interleaved, {md_escape(tenv.get('timer'))}, "
            f"{md_escape(tenv.get('device_name'))}, {md_escape(tenv.get('threads'))} threads"
        )
    if len(envs) > 1:
        lines.append(f"- note: the runs recorded {len(envs)} different environments (versions, threads or processor); the first is shown")
    lines += ["- runs (configuration hashes, the keys of the results store):", ""]
    by_id = {r["run_id"]: r for r in rows}
    table = [
        [md_escape(by_id[r.run_id]["label"]), md_escape(by_id[r.run_id]["budget"]), f"`{r.run_id}`", str(r.n_samples), str(r.n_errors)]
        for r in runs
        if r.run_id in by_id
    ]
    return lines + _table(["strategy", "budget", "run id", "samples stored", "errors"], table)
