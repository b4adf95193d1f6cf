"""`tokenbench gate`: exit status 0 or 1 against a committed reference, for CI.

The reference file says what to run (``config``), where it was measured
(``environment``), what came out (``rows``) and how much may change (``tolerances``).
The gate reruns that comparison through :func:`tokenbench.compare.run_comparison` and
prints one line per failing check, naming strategy, metric, measured and allowed value.

- ``deterministic`` mode (small CI subsets): prefill FLOPs and visual tokens per layer
  equal the reference exactly; predictions too, except at most ``max_flips`` per row
  on samples whose reference ``answer_margin`` was below ``margin_tolerance`` logits
  (CPU kernels differ across processors); a flipped confident answer fails.
- ``statistical`` mode (full runs): accuracy non-inferior to the reference by margin
  ``delta`` (paired on per-sample scores), prefill FLOPs at most ``flops_tolerance``
  above it, TTFT speed-up at least ``1 - ttft_tolerance`` of it where timing exists.

Device kind and dtype must match the reference's, or the gate says why it cannot
compare and exits 1. ``--update`` rewrites the file (creating it from the command-line
flags when there is none), printing a unified diff of old against new first.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from tokenbench.budget import Budget
from tokenbench.cli_options import add_budget_options, add_threads_option, apply_threads, quiet_weight_loading, strategy_specs
from tokenbench.errors import PluginError, UsageError

VERSION = 1
MODES = ("deterministic", "statistical")
#: a new reference file's configuration; model and task default to the registry's defaults
DEFAULT_CONFIG: dict[str, Any] = {"keep": "0.25", "limit": 24, "seed": 0, "device": "cpu", "dtype": "float32"}
TOLERANCES: dict[str, Any] = {"max_flips": 2, "margin_tolerance": 0.05, "delta": 0.02, "flops_tolerance": 0.01, "ttft_tolerance": 0.10}
_CONFIG_FLAGS = ("strategies", "budget", "keep", "limit", "model", "task", "seed", "timing_samples")


def add_parser(sub: Any) -> None:
    g = sub.add_parser(
        "gate",
        help="check a run against a committed reference (exit 0 or 1, for CI)",
        description="Rerun the comparison a reference file describes and check it against the reference.",
    )
    g.add_argument("--reference", required=True, metavar="FILE.json", help="the reference file (created or rewritten by --update)")
    g.add_argument(
        "--store",
        help="results database for the gate's run (default: a fresh temporary one; a store that already holds these runs gives back their stored results)",
    )
    g.add_argument("--update", action="store_true", help="rerun and rewrite the reference, printing a diff of old and new")
    g.add_argument("--mode", choices=MODES, help="with --update: deterministic (CI subsets) or statistical (full runs)")
    g.add_argument("--strategies", help="with --update: comma list (new file default: every registered strategy that reduces tokens and can run on the task)")
    add_budget_options(g, prefix="with --update: ")
    g.add_argument("--limit", type=int, help="with --update: samples (new file default: 24)")
    g.add_argument("--model", help="with --update: checkpoint path, hub id or registered name (new file default: the default model, 'reference')")
    g.add_argument("--task", help="with --update: NAME[:PATH] (new file default: the default task, shapes)")
    g.add_argument("--seed", type=int, help="with --update: seed (default 0)")
    g.add_argument("--timing-samples", type=int, help="with --update: samples in the timed loop (statistical mode's TTFT check; default 0: none)")
    g.add_argument("--device", help="run on this device (default: the reference's; it must be of the same kind; with --update: recorded)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="run in this dtype (default: the reference's; with --update: recorded)")
    add_threads_option(g)
    g.set_defaults(func=cmd_gate)


def cmd_gate(args: argparse.Namespace) -> int:
    ref_path = Path(args.reference)
    old_text = ref_path.read_text(encoding="utf-8") if ref_path.is_file() else None
    old = _load(ref_path, old_text) if old_text is not None else None
    flags = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    if not args.update:
        if old is None:
            raise UsageError(
                f"{ref_path}: no reference file; create it with 'tokenbench gate --update --reference {ref_path}' "
                "(options --strategies, --keep/--budget, --limit, --model, --task, --mode)"
            )
        if flags or args.mode:
            raise UsageError(f"--{next(iter(flags), 'mode').replace('_', '-')} applies only with --update; the gate runs the configuration in {ref_path}")
    config = new_config(old, flags, args)
    mode = args.mode or (old or {}).get("mode", "deterministic")
    device, dtype = args.device or config["device"], args.dtype or config["dtype"]
    if args.update:  # a reference made on another device or dtype records it
        config["device"], config["dtype"] = device, dtype
    if old is not None and not args.update:
        why = cannot_compare(old.get("environment", {}), device, dtype)
        if why:
            print(f"gate: cannot compare: {why}")
            return 1
    apply_threads(args.threads, lambda line: print(f"gate: {line}", file=sys.stderr))
    quiet_weight_loading()
    cmp, rows = _run(config, device, dtype, args.store)
    new = make_reference(cmp, rows, config, mode, (old or {}).get("tolerances", TOLERANCES))
    if args.update:
        new_text = dumps(new)
        sys.stdout.writelines(
            difflib.unified_diff(
                (old_text or "").splitlines(keepends=True),
                new_text.splitlines(keepends=True),
                fromfile=f"{ref_path} (old)" if old_text else "/dev/null",
                tofile=f"{ref_path} (new)",
            )
        )
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(new_text, encoding="utf-8")
        print(f"gate: wrote {ref_path} ({mode} mode, {len(new['rows'])} rows, {config.get('limit') or 'all'} samples)", file=sys.stderr)
        return 0
    assert old is not None
    failures, notes, checks = check(old, json.loads(dumps(new)), cmp.metric_kind == "binary")
    if old["environment"].get("weights") not in (None, new["environment"]["weights"]):
        notes.insert(0, f"the model's weights differ from the reference's ({new['environment']['weights']} vs {old['environment']['weights']})")
    for line in notes:
        print(f"gate: note: {line}")
    for line in failures:
        print(f"gate: FAIL {line}")
    verdict = f"{len(failures)} of {checks} checks failed" if failures else f"passed ({checks} checks)"
    print(f"gate: {mode} mode against {ref_path}: {verdict}")
    return 1 if failures else 0


def _load(path: Path, text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not a gate reference (invalid JSON: {exc})") from None
    if not isinstance(obj, dict) or obj.get("version") != VERSION or obj.get("mode") not in MODES:
        raise UsageError(f"{path}: not a version-{VERSION} gate reference (needs 'version': 1 and 'mode' one of {', '.join(MODES)})")
    return obj


def new_config(old: dict[str, Any] | None, flags: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The reference's configuration, or the defaults for a new file, overridden by flags."""
    from tokenbench.compare import default_task
    from tokenbench.registry import get_registry

    registry = get_registry()
    config = dict(old["config"]) if old else dict(DEFAULT_CONFIG)
    if "budget" in flags:
        config.pop("keep", None)
    if "keep" in flags:
        config.pop("budget", None)
    config.update(flags)
    if not config.get("model"):
        config["model"] = registry.default("models")
    if not config.get("task"):
        config["task"] = default_task(registry)
    if not config.get("strategies"):
        config["strategies"] = default_strategies(str(config["task"]))
    Budget.parse_option(*(str(config[k]) if config.get(k) else None for k in ("budget", "keep")))  # a file with both is refused here
    return config


def default_strategies(task: str) -> str:
    """Every registered strategy that reduces tokens and can run on ``task`` (``NAME[:PATH]``).

    A strategy that reads ground truth (``needs_ground_truth``) runs only on a task that
    provides it (``provides_relevant_tokens``); the baseline is always in a comparison.
    """
    from tokenbench.registry import get_registry

    registry = get_registry()
    provides = registry.load("tasks", task.partition(":")[0]).provides_relevant_tokens
    names = []
    for name in registry.names("strategies"):
        try:
            cls = registry.load("strategies", name)
        except PluginError:
            continue  # already reported among the registry's problems
        if not cls.keeps_all and (provides or not cls.needs_ground_truth):
            names.append(name)
    return ",".join(names)


def cannot_compare(env: dict[str, Any], device: str, dtype: str) -> str | None:
    kind = device.split(":")[0]
    if env.get("device_kind") != kind or env.get("dtype") != dtype:
        return (
            f"the reference was measured on {env.get('device_kind')} in {env.get('dtype')}, this run would be {kind} in {dtype}; "
            "results only compare on the same device kind and dtype (make a reference for this setting with --update)"
        )
    return None


def _run(config: dict[str, Any], device: str, dtype: str, store: str | None) -> tuple[Any, list[dict[str, Any]]]:
    from tokenbench.compare import CompareRequest, run_comparison
    from tokenbench.distributed import World
    from tokenbench.registry import get_registry
    from tokenbench.report import build_rows

    model = str(config["model"]) if config.get("model") else None
    specs = strategy_specs(str(config["strategies"]))
    budgets = Budget.parse_option(*(str(config[k]) if config.get(k) else None for k in ("budget", "keep")))
    with tempfile.TemporaryDirectory(prefix="tokenbench-gate-") as tmp:
        request = CompareRequest(
            strategies=specs,
            budgets=budgets,
            model=model,
            task=config.get("task"),
            limit=config.get("limit"),
            seed=int(config.get("seed", 0)),
            device=device,
            dtype=dtype,
            store=store or str(Path(tmp) / "gate.db"),
        )
        if config.get("timing_samples"):
            request.timing_samples = int(config["timing_samples"])
        cmp = run_comparison(request, get_registry(), world=World())  # the gate runs in one process
    assert cmp is not None  # a one-process world is its own rank 0
    return cmp, build_rows(cmp)


def _num(x: Any, digits: int | None = None) -> float | None:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return round(float(x), digits) if digits is not None else float(x)


def make_reference(cmp: Any, rows: list[dict[str, Any]], config: dict[str, Any], mode: str, tolerances: dict[str, Any]) -> dict[str, Any]:
    from tokenbench.plots import ttft_ms

    env = cmp.environment
    environment = {
        "device_kind": str(env.get("device", "cpu")).split(":")[0],
        "device_name": env.get("device_name"),
        "dtype": cmp.model.get("dtype"),
        "attention": cmp.model.get("attention"),
        "processor": env.get("processor"),
        "threads": env.get("threads"),
        "weights": cmp.model.get("weights_sha256") or cmp.model.get("revision"),
        **{k: env.get(k) for k in ("python", "torch", "transformers", "fvcore", "tokenbench")},
    }
    ids = set(cmp.sample_ids)
    base_ttft = next((ttft_ms(r) for r in rows if r["strategy"] == "baseline"), None)
    out_rows = []
    for run, row in zip(cmp.runs, rows):
        recs = [r for r in run.records if r.sample_id in ids]
        item: dict[str, Any] = {
            "strategy": run.strategy,
            "label": run.label,
            "params": run.params,
            "budget": run.budget.label,
            "flops_prefill": _num(row["flops_prefill"]),
            "visual_tokens_per_layer": row["visual_tokens_per_layer"],
            "predictions": {r.sample_id: [r.prediction, _num(r.record.get("answer_margin"), 4)] for r in recs},
            "accuracy": _num(row["accuracy"]),
            "n": row["n"],
        }
        if mode == "statistical":
            item["scores"] = {r.sample_id: r.score for r in recs if r.error is None}
        ttft = ttft_ms(row)
        if ttft is not None:
            item["ttft_ms"] = ttft
            item["ttft_speedup"] = row.get("ttft_speedup") or (base_ttft / ttft if base_ttft else None)
        out_rows.append(item)
    return {"version": VERSION, "mode": mode, "config": config, "environment": environment, "rows": out_rows, "tolerances": {**TOLERANCES, **tolerances}}


def _key(row: dict[str, Any]) -> str:
    return json.dumps([row["strategy"], row.get("params", {}), row["budget"]], sort_keys=True)


def check(ref: dict[str, Any], new: dict[str, Any], binary: bool) -> tuple[list[str], list[str], int]:
    """(failure lines, notes, number of checks) of ``new`` against the reference ``ref``."""
    tol = {**TOLERANCES, **ref.get("tolerances", {})}
    new_rows = {_key(r): r for r in new["rows"]}
    ref_keys = {_key(r) for r in ref["rows"]}
    failures: list[str] = []
    notes: list[str] = []
    checks = 0
    timing_missing = False
    for ref_row in ref["rows"]:
        name = f"{ref_row.get('label', ref_row['strategy'])} @ {ref_row['budget']}"
        row = new_rows.get(_key(ref_row))
        checks += 1
        if row is None:
            failures.append(f"{name}: row: measured missing from this run, allowed present (as in the reference)")
            continue
        fail = lambda metric, measured, allowed, name=name: failures.append(f"{name}: {metric}: measured {measured}, allowed {allowed}")  # noqa: E731
        if ref["mode"] == "deterministic":
            checks += 2
            if row["flops_prefill"] != ref_row["flops_prefill"]:
                fail("flops_prefill", repr(row["flops_prefill"]), f"{ref_row['flops_prefill']!r} (exactly the reference)")
            if row["visual_tokens_per_layer"] != ref_row["visual_tokens_per_layer"]:
                fail("visual_tokens_per_layer", row["visual_tokens_per_layer"], f"{ref_row['visual_tokens_per_layer']} (exactly the reference)")
            low: list[str] = []
            for sid, (pred, margin) in sorted(ref_row["predictions"].items()):
                checks += 1
                got = row["predictions"].get(sid)
                if got is None or (got[0] is None and pred is not None):
                    fail(f"prediction[{sid}]", "missing (sample not evaluated)" if got is None else "none (the sample failed; see the store)", repr(pred))
                elif got[0] != pred:
                    if margin is not None and margin < tol["margin_tolerance"]:
                        low.append(sid)
                    else:
                        why = (
                            "no margin recorded" if margin is None else f"reference margin {margin:.3f} ≥ {tol['margin_tolerance']} logits: a confident answer"
                        )
                        fail(f"prediction[{sid}]", repr(got[0]), f"{pred!r} ({why})")
            if len(low) > tol["max_flips"]:
                fail(
                    "low-margin prediction flips",
                    f"{len(low)} ({', '.join(low)})",
                    f"at most {tol['max_flips']} (reference margin < {tol['margin_tolerance']} logits)",
                )
            elif low:
                notes.append(f"{name}: {len(low)} prediction flip(s) on near-tie samples tolerated ({', '.join(low)})")
        else:
            checks += 2
            _check_accuracy(ref_row, row, tol["delta"], binary, fail)
            ref_flops, flops = ref_row.get("flops_prefill"), row.get("flops_prefill")
            if ref_flops is not None and (flops is None or flops > ref_flops * (1 + tol["flops_tolerance"])):
                fail(
                    "flops_prefill",
                    f"{flops:.6g}" if flops is not None else "none",
                    f"≤ {ref_flops * (1 + tol['flops_tolerance']):.6g} (reference {ref_flops:.6g} + {tol['flops_tolerance']:.0%})",
                )
            ref_speed, speed = ref_row.get("ttft_speedup"), row.get("ttft_speedup")
            if ref_speed is None or speed is None:
                timing_missing = True
            else:
                checks += 1
                floor = ref_speed * (1 - tol["ttft_tolerance"])
                if speed < floor:
                    fail("ttft_speedup", f"{speed:.3f}×", f"≥ {floor:.3f}× (reference {ref_speed:.3f}× − {tol['ttft_tolerance']:.0%})")
    for key, row in new_rows.items():
        if key not in ref_keys:
            failures.append(
                f"{row.get('label', row['strategy'])} @ {row['budget']}: row: measured present, allowed absent (not in the reference; run gate --update)"
            )
    if timing_missing:
        notes.append("no timing data in the reference or this run: TTFT speed-up not checked")
    return failures, notes, checks


def _check_accuracy(ref_row: dict[str, Any], row: dict[str, Any], delta: float, binary: bool, fail: Any) -> None:
    from tokenbench import stats

    ref_acc, acc = ref_row.get("accuracy"), row.get("accuracy")
    ref_scores, scores = ref_row.get("scores") or {}, row.get("scores") or {}
    common = sorted(set(ref_scores) & set(scores))
    if common:
        ni = stats.non_inferiority([scores[i] for i in common], [ref_scores[i] for i in common], margin=delta, binary=binary)
        if not ni.non_inferior:
            fail(
                "accuracy",
                f"{100 * (acc or 0):.1f}% (paired difference {100 * ni.difference:+.1f} points, one-sided 95% lower bound {100 * ni.lower_bound:+.1f}, n={len(common)})",
                f"lower bound above {-100 * delta:.1f} points vs the reference's {100 * (ref_acc or 0):.1f}% (non-inferiority, delta={delta})",
            )
    elif ref_acc is not None and (acc is None or acc < ref_acc - delta):
        fail(
            "accuracy",
            "none" if acc is None else f"{100 * acc:.1f}%",
            f"≥ {100 * (ref_acc - delta):.1f}% (reference {100 * ref_acc:.1f}% − delta {delta}; no per-sample scores to pair)",
        )


def dumps(obj: dict[str, Any]) -> str:
    """JSON with sorted keys; lists of scalars and small dicts of them stay on one line (readable diffs)."""
    from tokenbench.report import json_safe

    return _dump(json_safe(obj), 0) + "\n"


def _dump(x: Any, level: int) -> str:
    pad, inner = " " * level, " " * (level + 1)
    flat = lambda v: not isinstance(v, (dict, list))  # noqa: E731
    if isinstance(x, dict) and not (len(x) <= 6 and all(flat(v) for v in x.values())):
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dump(v, level + 1)}" for k, v in sorted(x.items())]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(x, list) and not all(flat(v) for v in x):
        return "[\n" + ",\n".join(inner + _dump(v, level + 1) for v in x) + "\n" + pad + "]"
    return json.dumps(x, sort_keys=True, ensure_ascii=False)
