"""The command line end to end on a saved tiny LLaVA and a jsonl task."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokenbench.cli import main

JSON_KEYS = {
    "strategy",
    "budget",
    "n",
    "accuracy",
    "ci95",
    "delta_vs_baseline",
    "p_value",
    "p_adjusted",
    "visual_tokens_llm_input",
    "flops_prefill",
    "visual_tokens_per_layer",
    "visual_tokens_layer_avg",
    "flops",
    "params",
}


def test_compare_json_carries_the_documented_keys(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "compare",
            "--model",
            str(tiny_llava),
            "--task",
            f"jsonl:{jsonl_task}",
            "--strategies",
            "random,attention-only,pooling",
            "--keep",
            "0.25",
            "--format",
            "json",
            "--store",
            str(tmp_path / "r.db"),
            "--quiet",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"model", "task", "device", "environment", "results"} <= set(out)
    assert {"torch", "transformers", "fvcore", "tokenbench", "threads"} <= set(out["environment"])
    rows = {r["strategy"]: r for r in out["results"]}
    assert set(rows) == {"baseline", "random", "attention-only", "pooling"}
    for r in rows.values():
        assert JSON_KEYS <= set(r), JSON_KEYS - set(r)
        assert r["n"] == 6
    assert rows["baseline"]["visual_tokens_llm_input"] == 36 and rows["baseline"]["p_value"] is None
    assert rows["random"]["visual_tokens_llm_input"] == 9 and rows["random"]["visual_tokens_per_layer"] == [9, 9, 9, 9]
    assert rows["random"]["flops_prefill"] < rows["baseline"]["flops_prefill"]
    assert set(rows["random"]["flops"]) == {"vision", "projector", "llm_prefill", "decode_per_token", "total_prefill"}
    assert 0.0 <= rows["random"]["p_adjusted"] <= 1.0 and rows["random"]["p_adjusted"] >= rows["random"]["p_value"]


def test_compare_table_is_printed(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "compare",
                "--model",
                str(tiny_llava),
                "--task",
                f"jsonl:{jsonl_task}",
                "--strategies",
                "random",
                "--budget",
                "4,8",
                "--store",
                str(tmp_path / "r.db"),
                "--quiet",
                "--by",
                "kind",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "acc %" in out and "Δ pts [95% CI]" in out and "p adj." in out and "kind = colour" in out
    assert out.count("random") >= 4  # two budgets, overall and per kind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "fastvv"], "unknown strategy 'fastvv'; did you mean 'fastv'?"),
        (["--strategies", "random", "--keep", "1.5"], "--keep must be in (0, 1], got 1.5"),
        (["--strategies", "random", "--budget", "0"], "--budget values must be positive integers, got 0"),
        (["--strategies", "random", "--budget", "64", "--keep", "0.2"], "argument --keep: not allowed with argument --budget"),
        (["--strategies", "random", "--budget", "99999"], "--budget 99999 exceeds the model's 36 visual tokens per image"),
        (["--strategies", "random:nope=1"], "strategy 'random' has no parameter 'nope' (valid: positions)"),
        (["--strategies", "random", "--task", "popee:/x"], "unknown task 'popee'; did you mean 'pope'?"),
        (["--strategies", "random", "--limit", "0"], "--limit must be positive, got 0"),
    ],
)
def test_bad_values_fail_in_one_line_before_any_model_loads(
    args: list[str], message: str, tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["compare", "--model", str(tiny_llava), "--task", f"jsonl:{jsonl_task}", "--store", str(tmp_path / "r.db")]
    if "--task" in args:
        base = base[:3] + base[5:]
    code = main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("tokenbench: error: ") and message in err[0], err
    assert not (tmp_path / "r.db").exists(), "no run may start on bad input"


def test_missing_model_path_is_one_line(tmp_path: Path, jsonl_task: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenbench.cli",
            "compare",
            "--model",
            str(tmp_path / "nowhere"),
            "--adapter",
            "llava",
            "--task",
            f"jsonl:{jsonl_task}",
            "--strategies",
            "random",
            "--store",
            str(tmp_path / "r.db"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        lines[-1] == f"tokenbench: error: {tmp_path / 'nowhere'}: no such directory (--model takes a checkpoint directory, "
        "a hub id such as llava-hf/llava-1.5-7b-hf, or a name from 'tokenbench list models')"
    ), lines
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.db").exists()


def test_a_hub_id_not_in_the_cache_while_offline_names_the_cache_and_the_fetch_command(
    tmp_path: Path, jsonl_task: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        ["compare", "--model", "no-such-org/no-such-model", "--task", f"jsonl:{jsonl_task}", "--strategies", "random", "--store", str(tmp_path / "r.db")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no-such-org/no-such-model: not in the local Hugging Face cache (" in err[0]
    assert "HF_HUB_OFFLINE=1" in err[0] and "'hf download no-such-org/no-such-model'" in err[0]


def test_flops_command_reproduces_the_fastv_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--config", "llava-1.5-7b", "--budget", "576,192", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    fastv = [r["fastv_formula_units"] / 1e12 for r in rows]
    assert fastv[0] == pytest.approx(2.99, abs=0.01) and fastv[1] == pytest.approx(0.98, abs=0.01)


def test_the_embedded_model_is_named_reference_not_by_its_install_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its results key, table and leaderboard must not depend on where the package is installed."""
    db = str(tmp_path / "r.db")
    common = ["--strategies", "random", "--keep", "0.25", "--limit", "4", "--format", "json", "--store", db, "--quiet"]
    assert main(["compare", *common]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["model"]["model"] == "reference" and len(first["model"]["weights_sha256"]) == 16
    assert main(["compare", "--model", "reference", *common]) == 0  # the same runs: nothing recomputed
    again = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in again["results"]] == [r["run_id"] for r in first["results"]]


# -- CPU threads ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cores", "load", "online", "threads"),
    [
        (2, 0.0, None, 2),
        (2, 0.4, None, 2),  # a quiet machine: every core (34 s against 41 s with 1 thread, issue 20)
        (2, 0.6, None, 1),
        (2, 2.1, None, 1),
        (2, 5.0, None, 1),  # one core busy or more: 1 thread, never 0
        (16, 3.0, None, 13),
        (16, 3.6, None, 12),
        (8, 32.0, 64, 4),
        (8, 0.0, 64, 8),  # a host-wide load over a 64-CPU host, 8 of them ours
        (1, 0.0, None, 1),
    ],
)
def test_threads_are_the_cores_not_already_busy(cores: int, load: float, online: int | None, threads: int) -> None:
    from tokenbench.cli_options import cpu_threads

    assert cpu_threads(cores, load, online) == threads


def test_the_load_is_what_other_processes_keep_busy_since_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/stat since the command started, less this process's own CPU time; the load average where it cannot say."""
    import tokenbench.cli_options as opts

    load = opts.cpu_load((9.0, 497.0, 1.5), (10.0, 500.0, 2.0))  # 3 CPU-s busy in 1 s, 0.5 of them ours
    assert load is not None and load.busy == 2.5 and load.describe() == "2.5 CPUs busy with other work over the last 1.0 s"
    monkeypatch.setattr(opts.os, "getloadavg", lambda: (1.26, 0.5, 0.2))
    assert opts.cpu_load(None, (10.0, 500.0, 2.0)) == opts.CpuLoad(1.26, "1-minute load average {busy:.1f}")  # no /proc/stat at the start
    short = opts.cpu_load((9.9, 499.0, 1.9), (10.0, 500.0, 2.0))  # too short a window
    assert short is not None and short.busy == 1.26
    monkeypatch.undo()
    if Path("/proc/stat").exists():  # the real reading: the machine has been busy, and so have we
        start = opts.cpu_reading()
        assert start is not None and start[1] > 0 and start[2] > 0


def test_the_default_threads_follow_the_load_and_are_printed_once(
    tiny_llava: Path, jsonl_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    import tokenbench.cli_options as opts

    monkeypatch.setattr(opts, "usable_cores", lambda: 2)
    monkeypatch.setattr(opts, "machine_load", lambda: opts.CpuLoad(2.14, "1-minute load average {busy:.1f}"))
    before = torch.get_num_threads()
    args = [
        "compare",
        "--model",
        str(tiny_llava),
        "--task",
        f"jsonl:{jsonl_task}",
        "--strategies",
        "random",
        "--keep",
        "0.25",
        "--store",
        str(tmp_path / "r.db"),
    ]
    try:
        assert main(args) == 0
        assert torch.get_num_threads() == 1
        err = capsys.readouterr().err
        assert err.count("CPU thread") == 1
        assert "tokenbench: 1 CPU thread (2 cores, 1-minute load average 2.1; --threads N to override)\n" in err
        assert main([*args, "--threads", "2"]) == 0  # an explicit count is used as given, without a word
        assert torch.get_num_threads() == 2 and "CPU thread" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    assert main([*args, "--threads", "0"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "argument --threads: expected a positive integer, got 0" in err_lines[0]


# -- progress ---------------------------------------------------------------------------
PROGRESS = re.compile(r"^tokenbench: run (\d) of 3 \((.+)\): (\d+) of 18 samples \((\d+) %\), elapsed (\d+ s|\d+ min \d\d s), (ETA .+|done)$")


def test_a_run_off_a_terminal_prints_progress_lines(tiny_llava: Path, jsonl_task: Path, tmp_path: Path) -> None:
    """stderr is a pipe here, as in a log file, CI or nohup: plain lines with the overall position."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenbench.cli",
            "compare",
            "--model",
            str(tiny_llava),
            "--task",
            f"jsonl:{jsonl_task}",
            "--strategies",
            "random,attention-only",
            "--keep",
            "0.25",
            "--batch-size",
            "4",
            "--store",
            str(tmp_path / "r.db"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [m for m in map(PROGRESS.match, proc.stderr.splitlines()) if m]
    assert {int(m[1]) for m in lines} == {1, 2, 3}  # run k of K, every run
    assert [m[2] for m in lines if m[1] == "2"][0] == "random @ 25.0%"
    done = [int(m[3]) for m in lines]
    assert done == sorted(done) and done[0] == 0 and lines[-1][0].endswith("18 of 18 samples (100 %), elapsed " + lines[-1][5] + ", done")
    assert any(re.fullmatch(r"ETA \d+ s|ETA \d+ min \d\d s", m[6]) for m in lines)
    assert "Loading weights" not in proc.stderr  # transformers' bar is off


def test_every_run_says_where_its_results_are_and_how_to_read_them_back(
    tiny_llava: Path, jsonl_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import shlex

    store = tmp_path / "my results.db"
    assert (
        main(
            [
                "compare",
                "--model",
                str(tiny_llava),
                "--task",
                f"jsonl:{jsonl_task}",
                "--strategies",
                "random",
                "--keep",
                "0.25",
                "--store",
                str(store),
                "--quiet",
                "--format",
                "json",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    run_ids = [r["run_id"] for r in json.loads(out)["results"]]
    assert f"tokenbench: 2 runs (12 sample records) stored in {store}\n" in err
    line = next(ln for ln in err.splitlines() if ln.startswith("tokenbench: list them: "))
    listing, export = line.removeprefix("tokenbench: list them: ").split("; export every sample: ")
    argv = shlex.split(listing)
    assert argv == ["tokenbench", "runs", "--store", str(store)]
    assert main(argv[1:]) == 0
    listed = capsys.readouterr().out
    assert all(run_id in listed for run_id in run_ids)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(export)
    assert argv[:2] == ["tokenbench", "runs"] and main(argv[1:]) == 0
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    assert {(r["strategy"], r["budget"], r["params"]) for r in rows} == {("baseline", "all", "{}"), ("random", "25.0%", "{}")}


def test_store_help_names_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    from tokenbench.store import DEFAULT_STORE

    for command in ("compare", "runs"):
        assert main([command, "--help"]) == 0
        assert f"default {DEFAULT_STORE}" in " ".join(capsys.readouterr().out.split())


# -- width -------------------------------------------------------------------------------
LONG = "sppruner:context=False,merge=False"  # as tables label it: parameters sorted, values as parsed


def test_the_default_tables_fit_100_columns(tiny_llava: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Six strategies, one with parameters, on shapes (relevant-recall column), by kind: 100 columns; --wide has everything."""
    db = str(tmp_path / "r.db")
    args = [
        "compare",
        "--model",
        str(tiny_llava),
        "--strategies",
        "random,attention-only,pooling,fastv,sparsevlm,sppruner:merge=false,context=false",
        "--keep",
        "0.25",
        "--limit",
        "8",
        "--by",
        "kind",
        "--store",
        db,
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100, max(out.splitlines(), key=len)
    assert "attention-only" in out and "sppruner:con" in out and LONG not in out and "recall %" in out and "kind = count" in out
    assert main([*args, "--wide"]) == 0
    wide = capsys.readouterr().out
    assert LONG in wide and "acc % [95% CI]" in wide and max(len(line) for line in wide.splitlines()) > 100
    assert main(["runs", "--store", db]) == 0
    runs = capsys.readouterr().out
    assert max(len(line) for line in runs.splitlines()) <= 100 and LONG in runs and '"alpha"' not in runs  # only what differs from the defaults
    assert main(["runs", "--store", db, "--wide"]) == 0
    assert '"alpha": 0.5' in capsys.readouterr().out  # every parameter, as JSON


def test_wide_and_md_keep_the_full_headers(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the terminal table is compact: md (and the leaderboards) and --wide keep every column and footnote as they were."""
    headers = ["strategy", "budget", "n", "acc % [95% CI]", "Δ vs base, pts [95% CI]", "p (adj.)", "tokens in / layer-avg", "prefill FLOPs vs base"]
    args = [
        "compare",
        "--model",
        str(tiny_llava),
        "--task",
        f"jsonl:{jsonl_task}",
        "--strategies",
        "random",
        "--keep",
        "0.25",
        "--store",
        str(tmp_path / "r.db"),
        "--quiet",
    ]
    assert main([*args, "--format", "md"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in md[0].strip("|").split("|")] == headers and any(line.startswith("- torch ") for line in md)
    assert main([*args, "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", wide[0]) == headers and any(line.startswith("  torch ") for line in wide)
    assert any(line.startswith("  tokens: ") and len(line) > 100 for line in wide)  # footnotes unwrapped, as before


# -- smaller ones ------------------------------------------------------------------------
def test_show_says_an_id_is_needed_and_names_the_one_at_that_position(
    tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["show", "--model", str(tiny_llava), "--task", f"jsonl:{jsonl_task}", "--strategies", "random", "--sample", "3", "--out", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        "tokenbench: error: unknown sample '3' in task jsonl: --sample takes an id, not a position; "
        "the sample at position 3 is 's3' (6 samples, first 's0', last 's5')"
    )
    assert "runs --export" not in err[0]


def test_weight_loading_is_quiet_and_downloads_keep_their_bar() -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging

    from tokenbench.cli_options import quiet_weight_loading

    downloads = are_progress_bars_disabled()
    quiet_weight_loading()
    assert not logging.is_progress_bar_enabled()
    assert are_progress_bars_disabled() == downloads


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """``tokenbench flops ... | true``: the reader is gone before anything is printed; the command exits quietly."""
    import subprocess

    proc = subprocess.run(
        f"{sys.executable} -m tokenbench flops --config internvl3-8b --budget 1280,320 | true",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
