"""`tokenbench runs --export DIR --format lmms-eval`: lmms-eval's --log_samples files from a small store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenbench.cli import main
from tokenbench.store import SampleRecord, Store

COLOURS = ["red", "green", "blue", "red", "green", "blue"]  # the answers write_jsonl_task gives s0..s5


def _store(path: Path, task_path: str) -> Path:
    """A baseline and a random@25% run on the 6-sample jsonl task; random fails s5 and gets s1 wrong."""
    store = Store(path)
    common = {"model": {"model": "/somewhere/tiny-llava", "dtype": "float32"}, "task": {"name": "jsonl", "path": task_path, "options": {}}, "seed": 0}
    for strategy, budget, wrong, failed in (("baseline", "all", set(), set()), ("random", "25.0%", {1}, {5})):
        run = store.open_run({**common, "strategy": strategy, "params": {}, "budget": budget, "tokenbench": "0.1.0"})
        for i, answer in enumerate(COLOURS):
            sid = f"s{i}"
            if i in failed:
                store.add_sample(run, SampleRecord(sid, i, "colour", None, None, None, "out of memory", {}))
                continue
            prediction = "purple" if i in wrong else answer
            record = {"tokens_per_layer": [36 if strategy == "baseline" else 9] * 4, "cluster": f"img{i // 2}"}
            store.add_sample(run, SampleRecord(sid, i, "colour", float(i not in wrong), prediction, f"USER: <image> q{i} ASSISTANT:", None, record))
    store.close()
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_one_samples_file_per_run_and_a_results_file(jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.db", str(jsonl_task))
    out = tmp_path / "logs"
    assert main(["runs", "--store", str(db), "--export", str(out), "--format", "lmms-eval"]) == 0
    assert "exported 11 sample records, 1 failed samples left out as lmms-eval 0.7.2 logs: 3 files" in capsys.readouterr().err
    (model,) = list(out.iterdir())
    assert model.name == "tiny-llava"
    names = sorted(p.name for p in model.iterdir())
    date = names[0].removesuffix("_results.json")
    assert names == [f"{date}_results.json", f"{date}_samples_jsonl__baseline__all.jsonl", f"{date}_samples_jsonl__random__25_0pct.jsonl"]

    rnd = _lines(model / f"{date}_samples_jsonl__random__25_0pct.jsonl")
    assert [line["doc_id"] for line in rnd] == [0, 1, 2, 3, 4]  # s5 failed: no score, no line
    first = rnd[1]
    assert set(first) == {"doc_id", "target", "filtered_resps", "doc_hash", "input", "exact_match", "tokenbench"}
    assert (first["target"], first["filtered_resps"], first["exact_match"], first["input"]) == ("green", "purple", 0.0, "USER: <image> q1 ASSISTANT:")
    assert [line["target"] for line in rnd] == COLOURS[:5] and [line["exact_match"] for line in rnd] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert first["tokenbench"] == {
        "sample_id": "s1",
        "kind": "colour",
        "run_id": first["tokenbench"]["run_id"],
        "visual_tokens_llm_input": 9,
        "cluster": "img0",
    }
    assert len(first["doc_hash"]) == 64

    results = json.loads((model / f"{date}_results.json").read_text())
    block = results["results"]["jsonl__random__25_0pct"]
    assert block["alias"] == "jsonl__random__25_0pct" and block["samples"] == 5
    assert block["exact_match,none"] == pytest.approx(0.8) and block["exact_match_stderr,none"] == pytest.approx(0.2)  # std 0.4472 / sqrt 5
    assert "exact_match_stderr_clustered,none" in block
    assert results["results"]["jsonl__baseline__all"]["exact_match,none"] == 1.0
    assert results["n-samples"]["jsonl__random__25_0pct"] == {"original": 6, "effective": 5}
    assert results["higher_is_better"]["jsonl__baseline__all"] == {"exact_match": True}
    assert results["configs"]["jsonl__random__25_0pct"]["tokenbench_config"]["budget"] == "25.0%"

    again = tmp_path / "again"
    assert main(["runs", "--store", str(db), "--export", str(again), "--format", "lmms-eval"]) == 0
    assert all((again / "tiny-llava" / n).read_bytes() == (model / n).read_bytes() for n in names)  # an unchanged store, the same files


def test_without_the_task_data_targets_are_null_and_it_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.db", str(tmp_path / "gone.jsonl"))
    assert main(["runs", "--store", str(db), "--export", str(tmp_path / "logs"), "--format", "lmms-eval"]) == 0
    assert "the task data of 2 run(s) cannot be loaded here; their lines have target null" in capsys.readouterr().err
    (samples,) = (tmp_path / "logs" / "tiny-llava").glob("*_samples_jsonl__baseline__all.jsonl")
    assert {line["target"] for line in _lines(samples)} == {None}


def test_export_errors_are_one_line(jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.db", str(jsonl_task))
    assert main(["runs", "--store", str(db), "--format", "lmms-eval"]) == 2
    assert capsys.readouterr().err == "tokenbench: error: --format lmms-eval goes with --export DIR (it says how the export is written)\n"
    (tmp_path / "file.txt").write_text("x")
    assert main(["runs", "--store", str(db), "--export", str(tmp_path / "file.txt"), "--format", "lmms-eval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenbench: error: ") and "is not a directory" in err and err.count("\n") == 1
