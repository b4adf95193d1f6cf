"""The ``tokenbench`` command line.

Errors at this boundary are one line naming the culprit and the fix (exit status 2);
strategies that failed on some samples make the exit status 1 after the table.
Heavy modules load inside the subcommands, so ``tokenbench list`` stays fast and
torch-free.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from tokenbench import gate, leaderboard, show
from tokenbench.cli_options import (
    add_budget_options,
    add_model_options,
    add_threads_option,
    apply_threads,
    key_values,
    model_request,
    quiet_weight_loading,
)
from tokenbench.errors import TokenbenchError, UsageError
from tokenbench.flops_analytic import available_model_configs
from tokenbench.registry import FAMILIES, get_registry
from tokenbench.store import DEFAULT_STORE

EXIT_USAGE = 2


def _registry(args: argparse.Namespace) -> Any:
    reg = get_registry()
    for problem in reg.problems:
        print(f"tokenbench: warning: {problem}", file=sys.stderr)
    if getattr(args, "strict_plugins", False) and reg.problems:
        raise UsageError(f"{len(reg.problems)} plugin problem(s) above and --strict-plugins is set")
    return reg


# -- list ----------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    families = [args.family] if args.family else list(FAMILIES)
    for family in families:
        print(f"{family}:")
        entries = [reg.entries[family][n] for n in reg.names(family)]
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.description}  [{e.distribution} {e.version}]")
    return 0


# -- compare -------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from tokenbench.compare import prepare, run_comparison
    from tokenbench.distributed import World
    from tokenbench.progress import Progress

    request = model_request(
        args,
        model_options=key_values(args.model_option, "--model-option"),
        limit=args.limit,
        batch_size=args.batch_size,
        store=args.store,
        on_error=args.on_error,
        timing_samples=args.timing_samples,
        timing_tokens=args.timing_tokens,
    )
    if args.plot:  # a missing matplotlib fails now, not after the whole run
        from tokenbench.plots import require_matplotlib

        require_matplotlib()
    world = World.from_env()  # one process, or this one's rank under accelerate launch / torchrun
    reg = _registry(args)
    prepared = prepare(request, reg)  # every check that needs no model, before anything else is printed
    quiet = args.quiet or not world.is_main  # rank 0 alone reports
    progress = Progress(enabled=not quiet)
    apply_threads(args.threads, None if quiet else progress.log, share=world.local_size)
    quiet_weight_loading()
    if world.distributed and not quiet:
        progress.log(f"data-parallel: {world.size} processes; rank r evaluates the samples at positions r, r + {world.size}, ...; rank 0 prints the table")
    cmp = run_comparison(request, reg, prepared=prepared, progress=progress, log=progress.log, world=world)
    if cmp is None:  # another rank: its samples are in the store, rank 0 reports
        return 0
    from tokenbench.report import render  # scipy: imported after the samples, not before the first

    text = render(cmp, args.format, adjust=args.adjust, by_kind=args.by == "kind", per_sample=args.per_sample, wide=args.wide)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"tokenbench: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        from tokenbench.plots import pareto_plot

        pareto_plot(cmp, args.plot, axis=args.plot_axis)
        print(f"tokenbench: wrote {args.plot}", file=sys.stderr)
    failing = [(run, [r for r in run.records if r.error]) for run in cmp.runs]
    failing = [(run, errs) for run, errs in failing if errs]
    for run, errs in failing:
        print(
            f"tokenbench: {run.label} @ {run.budget.label}: {len(errs)} of {len(run.records)} samples failed; first: {errs[0].sample_id}: {errs[0].error}",
            file=sys.stderr,
        )
    for line in where_stored(args.store, len(cmp.runs), sum(len(run.records) for run in cmp.runs)):
        print(f"tokenbench: {line}", file=sys.stderr)
    return 1 if failing else 0


def where_stored(store: str, runs: int, records: int) -> list[str]:
    """Where a comparison's results went, and the commands that read them back.

    >>> where_stored("my results.db", 3, 18)[1]
    "list them: tokenbench runs --store 'my results.db'; export every sample: tokenbench runs --store 'my results.db' --export results.csv"
    """
    flag = f"--store {shlex.quote(store)}"
    return [
        f"{runs} run{'' if runs == 1 else 's'} ({records} sample records) stored in {os.path.abspath(store)}",
        f"list them: tokenbench runs {flag}; export every sample: tokenbench runs {flag} --export results.csv",
    ]


# -- runs ----------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    import json

    from tokenbench.results_file import open_results, read_results
    from tokenbench.store import Store

    if args.import_file:
        runs = read_results(args.import_file)
        into = Store(args.store)
        try:
            into.restore_runs(runs)
        finally:
            into.close()
        print(
            f"tokenbench: imported {len(runs)} runs ({sum(len(r.samples) for r in runs)} sample records) from {args.import_file} into {args.store}",
            file=sys.stderr,
        )
        return 0
    if not os.path.exists(args.store):
        raise UsageError(f"{args.store}: no results store there; run 'tokenbench compare' first or pass --store PATH")
    if args.format and not args.export:
        raise UsageError(f"--format {args.format} goes with --export DIR (it says how the export is written)")
    store = open_results(args.store)
    if args.export and args.format == "lmms-eval":
        return _export_lmms_eval(store, args.export, _registry(args))
    if args.export:
        return _export(store, args.export)
    if args.wide:
        from tabulate import tabulate

        rows = []
        for run in store.runs():
            c = run.config
            rows.append(
                [
                    run.run_id,
                    c.get("model", {}).get("model", "?"),
                    c.get("task", {}).get("name", "?"),
                    c.get("strategy"),
                    json.dumps(c.get("params", {}), sort_keys=True),
                    c.get("budget"),
                    run.n_samples,
                    run.n_errors,
                ]
            )
        print(tabulate(rows, headers=["run", "model", "task", "strategy", "params", "budget", "samples", "errors"], tablefmt="simple"))
        return 0
    from tokenbench.leaderboard import model_name
    from tokenbench.stored import strategy_defaults
    from tokenbench.strategy import strategy_label
    from tokenbench.text_table import fit_width, plain_table, shorten

    reg, table = _registry(args), []
    for run in store.runs():
        c = run.config
        name = str(c.get("strategy"))
        table.append(
            {
                "run": run.run_id,
                "model": shorten(model_name(c.get("model", {})), 24),
                "task": shorten(str(c.get("task", {}).get("name", "?")), 16),
                "strategy": strategy_label(name, c.get("params", {}), strategy_defaults(reg, name)),
                "budget": str(c.get("budget")),
                "samples": str(run.n_samples),
                "errors": str(run.n_errors),
            }
        )
    print(plain_table(fit_width(table, "strategy"), right=("samples", "errors")))
    return 0


def _export(store: Any, path: str) -> int:
    import csv
    import json

    from tokenbench.results_file import is_results_file, write_results

    if is_results_file(path):
        print(f"tokenbench: exported {write_results(store, path)} sample records to {path}", file=sys.stderr)
        return 0
    records = [{"run_id": run_id, **rec.__dict__} for run_id, rec in store.iter_all()]
    if path.endswith(".csv"):
        configs = {run.run_id: run.config for run in store.runs()}
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=["run_id", "strategy", "params", "budget", "sample_id", "position", "kind", "score", "prediction", "prompt", "error", "record"]
            )
            writer.writeheader()
            for r in records:
                c = configs.get(r["run_id"], {})
                writer.writerow(
                    {
                        **r,
                        "strategy": c.get("strategy"),
                        "params": json.dumps(c.get("params", {}), sort_keys=True),
                        "budget": c.get("budget"),
                        "record": json.dumps(r["record"], sort_keys=True),
                    }
                )
    else:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"runs": [r.__dict__ for r in store.runs()], "samples": records}, fh, indent=1)
    print(f"tokenbench: exported {len(records)} sample records to {path}", file=sys.stderr)
    return 0


def _export_lmms_eval(store: Any, directory: str, registry: Any) -> int:
    from tokenbench.export_lmms_eval import LMMS_EVAL_VERSION, export_lmms_eval, task_metric_name, task_targets
    from tokenbench.stored import strategy_defaults
    from tokenbench.strategy import strategy_label

    def label(run: Any) -> str:
        name = str(run.config.get("strategy"))
        return strategy_label(name, run.config.get("params", {}), strategy_defaults(registry, name))

    done = export_lmms_eval(store, directory, label=label, metric_name=task_metric_name(registry), targets=task_targets(registry))
    skipped = f", {done.skipped_errors} failed samples left out" if done.skipped_errors else ""
    print(
        f"tokenbench: exported {done.samples} sample records{skipped} as lmms-eval {LMMS_EVAL_VERSION} logs: {len(done.files)} files in {directory}",
        file=sys.stderr,
    )
    if done.runs_without_targets:
        print(
            f"tokenbench: warning: the task data of {done.runs_without_targets} run(s) cannot be loaded here; their lines have target null",
            file=sys.stderr,
        )
    return 0


# -- flops ---------------------------------------------------------------------------
def cmd_flops(args: argparse.Namespace) -> int:
    import json

    from tokenbench.flops_report import flops_rows, flops_table

    try:
        budgets = [int(b) for b in args.budget.split(",") if b.strip()]
        text = json.dumps(flops_rows(args.config, budgets), indent=2) if args.format == "json" else flops_table(args.config, budgets)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    except ValueError as exc:
        raise UsageError(f"--budget: {exc}") from None
    print(text)
    return 0


# -- parser --------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line, like every other boundary error (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"tokenbench: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="tokenbench", description="Benchmarks for visual-token reduction in vision-language models.")
    p.add_argument("--strict-plugins", action="store_true", help="fail when any plugin cannot be loaded (for CI)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compare", help="compare strategies against the unreduced model")
    c.add_argument("--strategies", required=True, help="comma list; parameters as name:key=value,key=value")
    add_budget_options(c)
    add_model_options(c)
    c.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="adapter option, repeatable (Qwen2.5-VL: min_pixels, max_pixels)")
    c.add_argument(
        "--limit", type=int, help="evaluate a fixed, seeded subset of N items, stratified by kind (a group such as an MMBench question's rotations counts once)"
    )
    c.add_argument("--batch-size", type=int, help="samples per batch (default: 8 on a CPU; on CUDA what the free memory holds, printed)")
    add_threads_option(c)
    c.add_argument("--store", default=DEFAULT_STORE, help=f"results database (resumes interrupted runs; default {DEFAULT_STORE})")
    c.add_argument("--on-error", choices=["skip", "fail"], default="skip", help="a failing sample is recorded (skip) or stops the run (fail)")
    c.add_argument(
        "--timing-samples",
        type=int,
        default=0,
        metavar="N",
        help="time the first N samples in a separate loop (warm-up, strategies interleaved, batch 1): TTFT, decode, memory (default 0: off)",
    )
    c.add_argument("--timing-tokens", type=int, default=8, metavar="T", help="new tokens forced in every timed call (EOS ignored; default 8)")
    c.add_argument("--format", choices=["table", "md", "csv", "json"], default="table")
    c.add_argument(
        "--wide", action="store_true", help="table: every column in full (accuracy intervals, long names, long headers); by default it fits 100 columns"
    )
    c.add_argument("--by", choices=["kind"], help="add a breakdown per question kind / benchmark category")
    c.add_argument("--adjust", choices=["holm", "bh", "none"], default="holm", help="multiple-comparison correction")
    c.add_argument("--per-sample", action="store_true", help="with --format json: per-sample records")
    c.add_argument("--plot", metavar="FILE.png", help="write the accuracy/FLOPs Pareto plot")
    c.add_argument(
        "--plot-axis", choices=["flops", "ttft"], default="flops", help="x axis of --plot: prefill FLOPs vs baseline, or TTFT (needs --timing-samples)"
    )
    c.add_argument("--output", "-o", help="write the table to a file instead of stdout")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress display, no line on the CPU threads chosen")
    c.set_defaults(func=cmd_compare)

    ls = sub.add_parser("list", help="list registered strategies, adapters and tasks")
    ls.add_argument("family", nargs="?", choices=list(FAMILIES))
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("runs", help="list the runs in a results store, export or import them")
    r.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="FILE.db|FILE.jsonl.gz",
        help=f"results database (default {DEFAULT_STORE}; to list or export: also a results file)",
    )
    transfer = r.add_mutually_exclusive_group()
    transfer.add_argument(
        "--export",
        metavar="FILE.json|FILE.csv|FILE.jsonl.gz|DIR",
        help="export every per-sample record; FILE.jsonl.gz: the results file (every run, measurement and sample, "
        "what leaderboards are published from; see docs/outputs.md); DIR with --format lmms-eval",
    )
    transfer.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE.jsonl.gz",
        help="add the runs of a results file to --store (to resume or extend them); refused if the store holds one already",
    )
    r.add_argument("--wide", action="store_true", help="every parameter as JSON and the full model name; by default the table fits 100 columns")
    r.add_argument(
        "--format",
        choices=["lmms-eval"],
        help="with --export DIR: lmms-eval's --log_samples files (DIR/MODEL/DATE_samples_TASK__STRATEGY__BUDGET.jsonl per run, DATE_results.json)",
    )
    r.set_defaults(func=cmd_runs)

    f = sub.add_parser("flops", help="analytic FLOPs of a published architecture at several budgets (no weights)")
    f.add_argument("--config", required=True, help="a bundled architecture: " + ", ".join(available_model_configs()))
    f.add_argument("--budget", required=True, help="visual tokens, comma list (e.g. 576,192)")
    f.add_argument("--format", choices=["table", "json"], default="table")
    f.set_defaults(func=cmd_flops)
    for module in (gate, leaderboard, show):  # their modules import nothing heavy at the top
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        store = getattr(args, "store", None)
        where = f" in {store}" if store else ""
        print(f"\ntokenbench: interrupted; every finished sample is saved{where}. Run the same command again to resume.", file=sys.stderr)
        return 130
    except TokenbenchError as exc:
        print(f"tokenbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run() -> NoReturn:
    """The console script (and ``python -m tokenbench``): :func:`main`, then a fast exit.

    Once a command has finished, every file it wrote is closed; what is left is the
    interpreter tearing down torch's and transformers' modules, 0.6 s on a 2-core
    machine (benchmarks/harness_overhead.py, docs/measurement.md). So the streams are
    flushed, logging is shut down, and the process exits at once. Without torch loaded
    (``tokenbench list``, ``gate``) the exit is the normal one.
    """
    try:
        code = main()
    except BrokenPipeError:  # the reader went away (``| head``): what it read is all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        code = 0
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a closed pipe (``| head``): nothing more to say
        pass
    if "torch" in sys.modules:
        import logging

        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
