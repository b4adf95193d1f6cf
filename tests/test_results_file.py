"""Results files (tokenbench.results_file): lossless, deterministic, and strict about what they read.

Every store here is written through the ordinary Store API (no model is run), with the
awkward values a real store can hold: errors, missing scores, kinds and prompts, line
separators inside strings, NaN in a record, timing measurements.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokenbench.cli import main
from tokenbench.errors import StoreError
from tokenbench.results_file import open_results, read_results, write_results
from tokenbench.store import SampleRecord, Store
from tokenbench.stored import stored_timings

PROMPTS = ["USER: how many?\n<image> ASSISTANT:", "USER: what colour — «é»?\n<image> ASSISTANT:"]


def _fill(store: Store) -> None:
    for strategy, budget in (("baseline", "all"), ("random", "16"), ("odd\u2028name", "25.0%")):
        run = store.open_run({"strategy": strategy, "budget": budget, "params": {"k": 2, "q": [1.5, None]}, "task": {"name": "t"}})
        for i in range(5):
            error = "boom\nsecond line" if strategy == "random" and i == 3 else None
            store.add_sample(
                run,
                SampleRecord(
                    f"s{i}",
                    i,
                    None if i == 4 else ("even" if i % 2 == 0 else "odd"),
                    None if error else [0.0, 1.0, 0.25][i % 3],
                    None if error else f"answer\x85{i}\u2028",
                    None if i == 2 else PROMPTS[i % 2],
                    error,
                    {"kept": {"vision": list(range(i))}, "answer_margin": math.nan if i == 1 else 0.1 * i, "z": {"b": 1, "a": True}},
                ),
            )
        store.put_measurement(run, "flops", {"n": 5, "mean": {"total_prefill": 1.0 / 3}})
        store.put_measurement(run, "timing:aaaa", {"sample_ids": ["s0", "s1"], "latency_ms": {"ttft_median": 2.0}})
        if strategy != "odd\u2028name":
            store.put_measurement(run, "timing:bbbb", {"sample_ids": ["s0", "s1", "s2"], "latency_ms": {"ttft_median": 3.0}})


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "work.db")
    _fill(s)
    return s


def _lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[:-1]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))
    return path


def _same(a: Store, b: Store) -> None:
    """Everything the leaderboard, the gate and results_frame read is identical."""
    assert a.runs() == b.runs() and len(a.runs()) == 3
    for run in a.runs():
        assert a.run_config(run.run_id) == b.run_config(run.run_id)
        assert json.dumps([r.__dict__ for r in a.samples(run.run_id)]) == json.dumps([r.__dict__ for r in b.samples(run.run_id)])  # NaN too
        assert a.measurements(run.run_id) == b.measurements(run.run_id) and len(a.measurements(run.run_id)) >= 2
        assert a.done_ids(run.run_id) == b.done_ids(run.run_id) and a.done_ids(run.run_id, include_errors=True) == b.done_ids(run.run_id, include_errors=True)
    assert repr(list(a.dump_runs())) == repr(list(b.dump_runs()))  # created and updated times included


def test_store_to_file_to_store_loses_nothing(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    assert write_results(store, path) == 15
    _same(store, open_results(path))
    assert main(["runs", "--store", str(tmp_path / "imported.db"), "--import", str(path)]) == 0
    _same(store, Store(tmp_path / "imported.db"))


def test_export_is_deterministic_and_stores_each_prompt_once(store: Store, tmp_path: Path) -> None:
    one, two, again = tmp_path / "one.jsonl.gz", tmp_path / "two.jsonl.gz", tmp_path / "again.jsonl.gz"
    assert main(["runs", "--store", str(store.path), "--export", str(one)]) == 0
    write_results(store, two)
    write_results(open_results(one), again)
    data = one.read_bytes()
    assert data == two.read_bytes() == again.read_bytes()
    assert data[3] == 0 and data[4:8] == b"\0\0\0\0"  # gzip header: no file name, mtime 0
    assert not list(tmp_path.glob("*.tmp"))
    lines = _lines(one)
    assert lines[0] == '{"format":"tokenbench-results","version":1}'
    prompts = [json.loads(ln)["text"] for ln in lines if ln.startswith('{"type":"prompt"')]
    assert prompts == PROMPTS  # two distinct prompts, once each for 15 samples
    assert sum(ln.startswith('{"type":"sample"') for ln in lines) == 15


def test_runs_import_refuses_a_store_that_holds_the_runs(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl.gz"
    write_results(store, path)
    before = repr(list(store.dump_runs()))
    assert main(["runs", "--store", str(store.path), "--import", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds run" in err[0], err
    assert repr(list(Store(store.path).dump_runs())) == before


def test_stored_timings_use_the_measurement_every_run_shares(store: Store) -> None:
    ids = [r.run_id for r in store.runs()]
    assert {v["latency_ms"]["ttft_median"] for v in stored_timings(store, ids[:2]).values()} == {3.0}  # bbbb: more samples
    assert {v["latency_ms"]["ttft_median"] for v in stored_timings(store, ids).values()} == {2.0}  # the third run lacks bbbb
    assert set(store.measurements(ids[0], prefix="timing:")) == {"timing:aaaa", "timing:bbbb"}


def _edit(index: int, change: Callable[[dict[str, Any]], object]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        obj = json.loads(lines[index])
        change(obj)  # edits obj in place
        lines[index] = json.dumps(obj)
        return lines

    return apply


def _first(kind: str, lines: list[str]) -> int:
    return next(i for i, ln in enumerate(lines) if ln.startswith(f'{{"type":"{kind}"'))


#: how to break a good file, and a pattern its one-line error matches
BROKEN: dict[str, tuple[Callable[[list[str]], list[str]], str]] = {
    "newer version": (
        _edit(0, lambda o: o.update(version=2)),
        re.escape("line 1: written by a newer tokenbench (results file version 2, this version reads up to 1)"),
    ),
    "no header": (lambda ls: ls[1:], re.escape("line 1: not a tokenbench results file")),
    "not json": (lambda ls: ls[:2] + ['{"type": "run", oops'] + ls[2:], re.escape("line 3: not JSON (Expecting property name")),
    "blank line": (lambda ls: ls[:2] + [""] + ls[2:], re.escape("line 3: not JSON")),
    "unknown type": (
        _edit(1, lambda o: o.update(type="runn")),
        re.escape("line 2: unknown line type 'runn' (expected one of run, measurement, prompt, sample)"),
    ),
    "missing field": (_edit(1, lambda o: o.pop("created")), re.escape("line 2: run line: missing created")),
    "extra field": (_edit(1, lambda o: o.update(colour="red")), re.escape("line 2: run line: unexpected colour")),
    "wrong type": (
        lambda ls: _edit(_first("sample", ls), lambda o: o.update(position="0"))(ls),
        re.escape('line 7: sample line: position is "0", expected an integer'),
    ),
    "bool score": (
        lambda ls: _edit(_first("sample", ls), lambda o: o.update(score=True))(ls),
        re.escape("line 7: sample line: score is true, expected a number or null"),
    ),
    "sample before its run": (lambda ls: ls[:1] + [ls[_first("sample", ls)]] + ls[1:], re.escape("line 2: sample of run ")),
    "undefined prompt": (
        lambda ls: _edit(_first("sample", ls), lambda o: o.update(prompt=7))(ls),
        re.escape("line 7: sample s0: prompt 7 is not defined on an earlier line"),
    ),
    "duplicate sample": (lambda ls: ls + [ls[_first("sample", ls)]], r"line 30: sample s0 of run \w+ appears twice \(first on line 7\)"),
    "not an object": (lambda ls: ls[:1] + ["[1, 2]"] + ls[1:], re.escape("line 2: expected a JSON object")),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_malformed_results_file_is_one_line_naming_file_and_line(case: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl.gz"
    write_results(store, good)
    edit, expected = BROKEN[case]
    bad = _write_lines(tmp_path / "bad.jsonl.gz", edit(_lines(good)))
    with pytest.raises(StoreError) as info:
        read_results(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: line ") and re.search(expected, message) and "\n" not in message, message
    assert main(["leaderboard", "--store", str(bad), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tokenbench: error: {message}"]


def test_a_file_that_is_not_gzip_or_cut_short_is_one_line(store: Store, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl.gz"
    write_results(store, good)
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_bytes(gzip.decompress(good.read_bytes()))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[:-20])
    for path in (plain, cut):
        with pytest.raises(StoreError, match=rf"^{path}: not gzip-compressed, or cut short \(.+\)"):
            read_results(path)
    with pytest.raises(StoreError, match="no results file there"):
        read_results(tmp_path / "none.jsonl.gz")
