"""The timed loop (tokenbench.timing) on a tiny LLaVA: protocol, not speed.

No assertion here is about how fast anything is (that belongs in benchmarks/): the
tests check what is timed, in which order, with how many tokens, and that timing
leaves the accuracy results alone.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenbench import decoding
from tokenbench.adapters.llava import LlavaAdapter
from tokenbench.budget import FULL, Budget
from tokenbench.cli import main
from tokenbench.strategies.baseline import Baseline
from tokenbench.strategies.fastv import FastV
from tokenbench.strategies.random_drop import RandomDrop
from tokenbench.task import Sample
from tokenbench.timing import (
    MemoryProbe,
    PhaseTimer,
    TimedCall,
    TimingConfig,
    TimingSettings,
    current_timer,
    summarise,
    timed_loop,
)

LATENCY_KEYS = {"ttft_median", "ttft_iqr", "decode_per_token_median", "selection_median"}


@pytest.fixture(scope="module")
def adapter(tiny_llava: Path) -> LlavaAdapter:
    return LlavaAdapter.load(str(tiny_llava))


@pytest.fixture(scope="module")
def samples(jsonl_task: Path) -> list[Sample]:
    from tokenbench.tasks.jsonl import JsonlTask

    return list(JsonlTask(str(jsonl_task)).load())[:3]


class Recorder:
    """Wraps an adapter: records every generate call and whether a timer was active."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, str, bool, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, samples: Any, prompts: Any, strategy: Any, budget: Any, **kw: Any) -> Any:
        timer = current_timer()
        out = self.inner.generate(samples, prompts, strategy, budget, **kw)
        marks = len(timer.marks) if timer is not None else 0
        self.calls.append((samples[0].id, strategy.name, budget.label, timer is not None, marks))
        return out


def _configs() -> list[TimingConfig]:
    return [TimingConfig(Baseline(), FULL), TimingConfig(RandomDrop(), Budget("count", 9)), TimingConfig(FastV(), Budget("count", 9))]


def test_summary_has_medians_and_iqr(adapter: LlavaAdapter, samples: list[Sample]) -> None:
    configs = timed_loop(adapter, samples[:2], [s.question for s in samples[:2]], _configs(), settings=TimingSettings(2, new_tokens=3))
    for config in configs:
        assert config.error is None, config.error
        out = summarise(config)
        lat = out["latency_ms"]
        assert LATENCY_KEYS <= set(lat)
        assert lat["n"] == 2 and lat["ttft_from"] == "vision_start"
        assert lat["ttft_median"] > 0 and lat["ttft_iqr"] >= 0 and lat["decode_per_token_median"] > 0
        assert lat["ttft_q1"] <= lat["ttft_median"] <= lat["ttft_q3"]
        assert out["peak_memory_mb"] is not None and out["peak_memory_mb"] >= 0
        assert out["memory"]["method"]
    sel = {c.strategy.name: summarise(c)["latency_ms"]["selection_median"] for c in configs}
    assert sel["baseline"] == 0.0 and sel["random"] > 0 and sel["fastv"] > 0


def test_strategies_are_interleaved_and_warmup_is_untimed(adapter: LlavaAdapter, samples: list[Sample]) -> None:
    rec = Recorder(adapter)
    configs = _configs()
    settings = TimingSettings(3, new_tokens=2, warmup=2, memory=False)
    timed_loop(rec, samples, [s.question for s in samples], configs, settings=settings)  # type: ignore[arg-type]
    names = [c.strategy.name for c in configs]
    warm, timed = rec.calls[:6], rec.calls[6:]
    # warm-up: two runs per configuration on the first sample, before any timed call
    assert [(c[0], c[1]) for c in warm] == [(samples[0].id, n) for n in names for _ in range(2)]
    # timed: per sample, every configuration once, the order rotating by one
    expected = [(s.id, names[(j + i) % 3]) for i, s in enumerate(samples) for j in range(3)]
    assert [(c[0], c[1]) for c in timed] == expected
    assert all(c[3] and c[4] > 0 for c in timed)
    # only the timed calls became measurements
    assert all(len(c.calls) == len(samples) for c in configs)


def test_forced_tokens_ignore_eos(adapter: LlavaAdapter, samples: list[Sample]) -> None:
    vocab = adapter.model.config.text_config.vocab_size
    saved = adapter.eos_ids
    adapter.eos_ids = set(range(vocab))  # every token ends generation ...
    try:
        plain = adapter.generate(samples[:1], [samples[0].question], Baseline(), FULL, max_new_tokens=5)
        assert plain[0].prediction == ""  # ... in the accuracy path
        timer = PhaseTimer("cpu", force_new_tokens=5)
        with timer.active():
            adapter.generate(samples[:1], [samples[0].question], Baseline(), FULL, max_new_tokens=5)
        call = TimedCall.from_marks(timer.times())
        assert call.decode_steps == 4  # 5 tokens: the first from the prefill, 4 decode steps
        config = TimingConfig(RandomDrop(), Budget("count", 9))
        timed_loop(adapter, samples[:2], [s.question for s in samples[:2]], [config], settings=TimingSettings(2, new_tokens=4, memory=False))
        assert config.error is None and [c.decode_steps for c in config.calls] == [3, 3]
    finally:
        adapter.eos_ids = saved


def test_min_new_tokens_in_the_decoder(adapter: LlavaAdapter, samples: list[Sample], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = decoding.prefill_and_decode

    def spy(*args: Any, **kw: Any) -> Any:
        out = real(*args, **{**kw, "eos_ids": set(range(10_000)), "min_new_tokens": 3})
        seen.append(len(out.tokens[0]))
        return out

    monkeypatch.setattr("tokenbench.decoder_adapter.prefill_and_decode", spy)
    adapter.generate(samples[:1], [samples[0].question], Baseline(), FULL, max_new_tokens=6)
    assert seen == [3]  # forced up to 3, then the first EOS stops it


def test_phase_arithmetic() -> None:
    marks = [
        ("start", 0.0),
        ("vision_start", 0.1),
        ("prefill_start", 0.3),
        ("selection_start", 0.31),
        ("selection_end", 0.33),
        ("first_token", 1.0),
        ("token", 1.2),
        ("token", 1.4),
        ("end", 1.5),
    ]
    call = TimedCall.from_marks(marks)
    assert call.ttft == pytest.approx(0.9) and call.vision == pytest.approx(0.2)
    assert call.selection == pytest.approx(0.02) and call.decode_steps == 2
    assert call.decode_per_token == pytest.approx(0.2) and call.total == pytest.approx(1.5)
    assert TimedCall.from_marks([("start", 0.0), ("first_token", 0.5)]).from_vision_start is False


def test_memory_probe_sees_an_allocation() -> None:
    with MemoryProbe("cpu") as probe:
        x = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        del x
    assert probe.peak_mb is not None and probe.peak_mb > 128, probe.method


def test_timing_rows_in_json_and_accuracy_unchanged(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "compare",
        "--model",
        str(tiny_llava),
        "--task",
        f"jsonl:{jsonl_task}",
        "--strategies",
        "random,fastv",
        "--keep",
        "0.25",
        "--format",
        "json",
        "--quiet",
    ]
    assert main(common + ["--store", str(tmp_path / "plain.db")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(common + ["--store", str(tmp_path / "timed.db"), "--timing-samples", "2", "--timing-tokens", "3"]) == 0
    timed = json.loads(capsys.readouterr().out)
    for row in plain["results"]:
        assert "latency_ms" not in row and "peak_memory_mb" not in row
    rows = {r["strategy"]: r for r in timed["results"]}
    for row in rows.values():
        assert LATENCY_KEYS <= set(row["latency_ms"]) and row["latency_ms"]["n"] == 2
        assert row["peak_memory_mb"] is not None
    assert rows["baseline"]["ttft_speedup"] == pytest.approx(1.0)
    # accuracy: identical numbers and identical per-sample records with and without timing
    drop = {"latency_ms", "peak_memory_mb", "ttft_speedup", "run_id"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in plain["results"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in timed["results"]
    ]

    def records(db: Path) -> list[tuple[Any, ...]]:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT sample_id, score, prediction, record FROM samples ORDER BY run_id, sample_id").fetchall()
        return [(s, sc, p, {k: v for k, v in json.loads(r).items() if k != "selection_seconds"}) for s, sc, p, r in rows]

    assert records(tmp_path / "plain.db") == records(tmp_path / "timed.db")
    # a rerun reuses the stored timings
    assert main(common + ["--store", str(tmp_path / "timed.db"), "--timing-samples", "2", "--timing-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "reused stored timings" in captured.err
    again = {r["strategy"]: r for r in json.loads(captured.out)["results"]}
    assert again["random"]["latency_ms"] == rows["random"]["latency_ms"]


def test_table_has_ttft_column_only_when_timed(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "compare",
        "--model",
        str(tiny_llava),
        "--task",
        f"jsonl:{jsonl_task}",
        "--strategies",
        "random",
        "--keep",
        "0.25",
        "--quiet",
        "--store",
        str(tmp_path / "r.db"),
    ]
    assert main(base) == 0
    assert "TTFT vs base" not in capsys.readouterr().out
    assert main(base + ["--timing-samples", "1", "--timing-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "TTFT vs base" in out and "strategies interleaved" in out


@pytest.mark.parametrize("args", [["--timing-samples", "-1"], ["--timing-tokens", "0"]])
def test_bad_timing_values_fail_before_loading(args: list[str], tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", "--model", str(tiny_llava), "--task", f"jsonl:{jsonl_task}", "--strategies", "random", "--store", str(tmp_path / "r.db"), *args])
    assert code == 2 and "--timing-samples" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_deadline_stops_between_rounds(adapter: LlavaAdapter, samples: list[Sample]) -> None:
    import time

    configs = _configs()[:2]
    timed_loop(
        adapter,
        samples,
        [s.question for s in samples],
        configs,
        settings=TimingSettings(3, new_tokens=2, repeats=5, memory=False),
        deadline=time.perf_counter(),
    )
    assert [len(c.calls) for c in configs] == [1, 1]  # the first round always runs; none starts after the deadline
