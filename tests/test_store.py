"""Runs that lose nothing: resume after SIGKILL, run keys, fault isolation, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tokenbench
from tokenbench.cli import main
from tokenbench.registry import Registry
from tokenbench.store import SCHEMA_VERSION, Store, StoreError

SLOW_PLUGIN = """
import time, torch, tokenbench

class Slow(tokenbench.Strategy):
    name = "slow-random"
    description = "random, 80 ms per selection (for interruption tests)"
    def schedule(self, model):
        return (tokenbench.StageSpec.vision(),)
    def select(self, ctx):
        time.sleep(0.08)
        return tokenbench.Selection(keep=torch.randperm(ctx.num_tokens, generator=ctx.generator)[: ctx.budget].sort().values)

@tokenbench.hookimpl
def register_strategies(register):
    register(Slow)
"""


def _plugin_path(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "slow_plugin.py").write_text(SLOW_PLUGIN)
    info = root / "slow_plugin-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tokenbench.strategies]\nslow = slow_plugin\n")
    return root


def _compare_cmd(model: Path, task: Path, store: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tokenbench.cli",
        "compare",
        "--model",
        str(model),
        "--task",
        f"jsonl:{task}",
        "--strategies",
        "slow-random",
        "--keep",
        "0.25",
        "--batch-size",
        "1",
        "--format",
        "json",
        "--store",
        str(store),
        "--quiet",
    ]


def _rows(store: Path) -> dict[str, int]:
    with sqlite3.connect(store) as db:
        return {sid: rowid for rowid, sid in db.execute("SELECT rowid, run_id || '/' || sample_id FROM samples")}


def test_sigkill_then_resume_gives_the_uninterrupted_table_and_recomputes_nothing(tiny_llava: Path, tmp_path: Path) -> None:
    from tokenbench.testing import write_jsonl_task

    task = write_jsonl_task(tmp_path / "task", n=24, size=48)
    env = {**os.environ, "PYTHONPATH": str(_plugin_path(tmp_path / "plugins"))}
    store = tmp_path / "killed.db"
    proc = subprocess.Popen(_compare_cmd(tiny_llava, task, store), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if store.exists():
            try:
                if len(_rows(store)) >= 24 + 3:  # baseline done, a few slow-random samples done
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(store)
    assert 24 + 3 <= len(before) < 48, f"the kill must land mid-run (rows: {len(before)})"

    resumed = subprocess.run(_compare_cmd(tiny_llava, task, store), env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stderr
    after = _rows(store)
    assert len(after) == 48
    assert all(after[k] == v for k, v in before.items()), "a finished sample was recomputed"

    fresh = subprocess.run(
        _compare_cmd(tiny_llava, task, tmp_path / "fresh.db"), env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent
    )
    assert json.loads(resumed.stdout)["results"] == json.loads(fresh.stdout)["results"]


def _cmp(model: Path, task: Path, store: Path, strategies: str, capsys: pytest.CaptureFixture[str]) -> dict:
    code = main(
        [
            "compare",
            "--model",
            str(model),
            "--task",
            f"jsonl:{task}",
            "--strategies",
            strategies,
            "--keep",
            "0.25",
            "--format",
            "json",
            "--store",
            str(store),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    return {"code": code, **json.loads(out)}


def test_changing_a_parameter_starts_a_new_run_and_identical_runs_agree(
    tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "r.db"
    first = _cmp(tiny_llava, jsonl_task, store, "pooling", capsys)
    again = _cmp(tiny_llava, jsonl_task, tmp_path / "other.db", "pooling", capsys)
    assert first["results"] == again["results"], "two identical runs must give identical tables"
    n_runs = len(Store(store).runs())
    _cmp(tiny_llava, jsonl_task, store, "fastv:k=1", capsys)
    _cmp(tiny_llava, jsonl_task, store, "fastv:k=2", capsys)
    runs = Store(store).runs()
    assert len(runs) == n_runs + 2
    fastv = [r for r in runs if r.config["strategy"] == "fastv"]
    assert {r.config["params"]["k"] for r in fastv} == {1, 2} and len({r.run_id for r in fastv}) == 2


class _Broken(tokenbench.Strategy):
    description = "broken on purpose"

    def schedule(self, model):
        return (tokenbench.StageSpec.vision(),)


def _broken(kind: str) -> type:
    def select(self, ctx):
        b, n = ctx.budget, ctx.num_tokens
        if kind == "raises":
            raise RuntimeError("boom")
        if kind == "out-of-range":
            return tokenbench.Selection(keep=torch.arange(n - b + 1, n + 1))
        if kind == "duplicate":
            return tokenbench.Selection(keep=torch.zeros(b, dtype=torch.long))
        if kind == "unsorted":
            return tokenbench.Selection(keep=torch.arange(b).flip(0))
        if kind == "wrong-count":
            return tokenbench.Selection(keep=torch.arange(b + 2))
        if kind == "nan-scores":
            return tokenbench.Selection(keep=torch.arange(b), scores=torch.full((n,), float("nan")))
        return tokenbench.Selection(keep=torch.arange(b), values=torch.full((b, ctx.tokens.shape[1]), float("nan")))

    return type(f"Broken_{kind}", (_Broken,), {"name": f"broken-{kind}", "select": select})


KINDS = {
    "raises": "RuntimeError: boom",
    "out-of-range": "keep indices out of range",
    "duplicate": "keep indices contain duplicates",
    "unsorted": "keep indices are not sorted ascending",
    "wrong-count": "kept 11 visual tokens after its last stage, but the budget is 9",
    "nan-scores": "scores contain NaN or infinite values",
    "nan-tokens": "values contain NaN or infinite values",
}


def test_each_kind_of_broken_strategy_is_isolated(
    tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry.from_entry_points()
    plugin = type("BrokenPlugin", (), {"register_strategies": staticmethod(tokenbench.hookimpl(lambda register: [register(_broken(k)) for k in KINDS]))})
    reg.add_plugin(plugin, "broken-plugin", collect=True)
    assert reg.problems == []
    monkeypatch.setattr("tokenbench.cli.get_registry", lambda: reg)
    names = ",".join(f"broken-{k}" for k in KINDS) + ",random"
    code = main(
        [
            "compare",
            "--model",
            str(tiny_llava),
            "--task",
            f"jsonl:{jsonl_task}",
            "--strategies",
            names,
            "--keep",
            "0.25",
            "--format",
            "json",
            "--store",
            str(tmp_path / "r.db"),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    rows = {r["strategy"]: r for r in json.loads(captured.out)["results"]}
    assert rows["random"]["n"] == 6 and rows["random"]["errors"] == 0
    assert rows["baseline"]["n"] == 6
    summary = captured.err.strip().splitlines()
    for kind, reason in KINDS.items():
        assert rows[f"broken-{kind}"]["errors"] == 6 and rows[f"broken-{kind}"]["n"] == 0
        line = [s for s in summary if s.startswith(f"tokenbench: broken-{kind} @ 25.0%: 6 of 6 samples failed")]
        assert len(line) == 1 and reason in line[0], (kind, summary)


def test_malformed_jsonl_line_names_file_and_line(tiny_llava: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "image": "x.png", "question": "q", "answers": ["a"]}\n{not json\n')
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["compare", "--model", str(tiny_llava), "--task", f"jsonl:{bad}", "--strategies", "random", "--store", str(tmp_path / "r.db")]) == 2
    assert capsys.readouterr().err.strip() == f"tokenbench: error: {bad}:2: not valid JSON (Expecting property name enclosed in double quotes)"


def test_missing_task_file_and_missing_image(tiny_llava: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["compare", "--model", str(tiny_llava), "--task", f"jsonl:{tmp_path}/none.jsonl", "--strategies", "random", "--store", str(tmp_path / "r.db")])
        == 2
    )
    assert "none.jsonl: file not found" in capsys.readouterr().err
    task = tmp_path / "t.jsonl"
    task.write_text('{"id": "a", "image": "missing.png", "question": "q", "answers": ["a"]}\n')
    assert main(["compare", "--model", str(tiny_llava), "--task", f"jsonl:{task}", "--strategies", "random", "--store", str(tmp_path / "r.db")]) == 2
    assert capsys.readouterr().err.strip() == f"tokenbench: error: {task}:1: image 'missing.png' not found (paths are relative to the .jsonl file)"


def test_unreadable_image_is_a_sample_error_or_a_failure_with_on_error_fail(tiny_llava: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenbench.testing import write_jsonl_task

    task = write_jsonl_task(tmp_path / "t", n=3, size=48)
    (task.parent / "images" / "1.png").write_bytes(b"not a png")
    args = ["compare", "--model", str(tiny_llava), "--task", f"jsonl:{task}", "--strategies", "random", "--format", "json", "--quiet"]
    assert main(args + ["--store", str(tmp_path / "a.db")]) == 1
    captured = capsys.readouterr()
    rows = {r["strategy"]: r for r in json.loads(captured.out)["results"]}
    assert rows["random"]["n"] == 2 and rows["random"]["errors"] == 1
    assert "s1: " in captured.err and "1.png: cannot read image for sample s1" in captured.err
    assert main(args + ["--store", str(tmp_path / "b.db"), "--on-error", "fail"]) == 2
    assert "1.png: cannot read image for sample s1" in capsys.readouterr().err


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"written by a newer tokenbench \\(store schema {SCHEMA_VERSION + 1}"):
        Store(path)


def test_runs_lists_and_exports(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "r.db"
    _cmp(tiny_llava, jsonl_task, store, "random", capsys)
    assert main(["runs", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    assert "random" in listing and "baseline" in listing
    assert main(["runs", "--store", str(store), "--export", str(tmp_path / "x.json")]) == 0
    exported = json.loads((tmp_path / "x.json").read_text())
    assert len(exported["samples"]) == 12 and {"kept", "tokens_per_layer"} <= set(exported["samples"][0]["record"])


def test_a_second_run_on_the_same_store_traces_no_shape_again(
    tiny_llava: Path, jsonl_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tokenbench.flops

    traced: list[object] = []
    real = tokenbench.flops.count_macs
    monkeypatch.setattr(tokenbench.flops, "count_macs", lambda *a, **k: traced.append(a[0]) or real(*a, **k))
    args = [
        "compare",
        "--model",
        str(tiny_llava),
        "--task",
        f"jsonl:{jsonl_task}",
        "--keep",
        "0.25",
        "--format",
        "json",
        "--quiet",
        "--store",
        str(tmp_path / "r.db"),
    ]
    assert main(args + ["--strategies", "random"]) == 0
    first = json.loads(capsys.readouterr().out)["results"]
    assert traced, "the first run traces the vision tower, the projector and the decoder layers"
    with Store(tmp_path / "r.db") as store:
        (key,) = [k for (k,) in store._db.execute("SELECT key FROM meta WHERE key LIKE 'macs:%'")]
        assert len(store.meta(key)) == len(traced)
    traced.clear()
    # new runs (pooling, another seed) with the same token counts: every count comes from the store
    assert main(args + ["--strategies", "pooling", "--seed", "1"]) == 0
    second = json.loads(capsys.readouterr().out)["results"]
    assert traced == []
    assert [r["flops"] for r in second] == [r["flops"] for r in first]  # the same counts, read back


def test_a_batch_is_written_in_one_transaction(tmp_path: Path) -> None:
    from tokenbench.store import SampleRecord

    with Store(tmp_path / "s.db") as store:
        run = store.open_run({"strategy": "x"})
        recs = [SampleRecord(f"s{i}", i, None, 1.0, "a", "p", None, {"num_visual": 1}) for i in range(3)]
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        store.add_samples(run, recs)
        store._db.set_trace_callback(None)
        assert store.done_ids(run) == {"s0", "s1", "s2"}
    assert [s.split()[0] for s in statements].count("BEGIN") == 1 and statements[-1] == "COMMIT"
