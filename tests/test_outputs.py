"""Outputs: the results DataFrame, Pareto plot, selection figure, CI gate and leaderboards.

One tiny comparison (tiny LLaVA, 6-sample jsonl task) is run once per module; the gate
and the leaderboard read it back from its store, so only the gate's fresh rerun and
``show`` run the model again.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenbench.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
STRATEGIES = "random,attention-only"


@pytest.fixture(scope="module")
def compared(tiny_llava: Path, jsonl_task: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("outputs")
    args = ["--model", str(tiny_llava), "--task", f"jsonl:{jsonl_task}", "--strategies", STRATEGIES, "--keep", "0.25", "--store", str(d / "r.db")]
    assert main(["compare", *args, "--quiet", "--plot", str(d / "pareto.png")]) == 0
    return {"dir": d, "db": d / "r.db", "png": d / "pareto.png", "args": args}


@pytest.fixture(scope="module")
def reference(compared: dict[str, Any]) -> Path:
    """A deterministic gate reference made with --update (the runs are already in the store)."""
    ref = compared["dir"] / "gate.json"
    assert main(["gate", "--update", "--reference", str(ref), *compared["args"]]) == 0
    return ref


def _png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000, (data[:8], len(data))


# -- results_frame ---------------------------------------------------------------------
def test_results_frame_has_one_row_per_run_and_sample(compared: dict[str, Any]) -> None:
    import tokenbench

    df = tokenbench.results_frame(compared["db"])
    assert list(df.columns) == [
        "run_id",
        "model",
        "task",
        "strategy",
        "params",
        "budget",
        "sample_id",
        "kind",
        "score",
        "prediction",
        "error",
        "tokens_in",
        "layer_avg",
        "answer_margin",
    ]  # no relevant_token_recall on jsonl
    assert len(df) == 3 * 6 and sorted(df["strategy"].unique()) == ["attention-only", "baseline", "random"]
    rnd = df[df.strategy == "random"]
    assert set(rnd.tokens_in) == {9} and set(rnd.layer_avg) == {9.0} and set(rnd.budget) == {"25.0%"}
    assert set(df[df.strategy == "baseline"].tokens_in) == {36} and json.loads(rnd.params.iloc[0]) == {}
    one = tokenbench.results_frame(compared["db"], run_ids=[rnd.run_id.iloc[0]])
    assert len(one) == 6 and df.answer_margin.notna().all()


def test_import_tokenbench_does_not_import_pandas() -> None:
    code = "import sys, tokenbench; assert 'pandas' not in sys.modules; assert callable(tokenbench.results_frame)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).parent)


# -- plots -------------------------------------------------------------------------------
def test_plot_writes_a_png(compared: dict[str, Any]) -> None:
    _png(compared["png"])


def test_pareto_front_keeps_only_undominated_points() -> None:
    from tokenbench.plots import pareto_front

    assert pareto_front([(1.0, 0.9), (0.5, 0.8), (0.6, 0.7), (0.2, 0.8), (0.1, 0.5)]) == [4, 3, 0]


def test_missing_matplotlib_is_one_line_before_any_run(
    compared: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["compare", *compared["args"][:-1], str(tmp_path / "new.db"), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'tokenbench[plot]'" in err[0], err
    assert not (tmp_path / "new.db").exists()


# -- show --------------------------------------------------------------------------------
def test_show_draws_the_kept_tokens(tiny_llava: Path, tmp_path: Path) -> None:
    out = tmp_path / "show.png"
    assert main(["show", "--model", str(tiny_llava), "--strategies", "oracle,fastv", "--sample", "shapes-00003", "--keep", "0.25", "--out", str(out)]) == 0
    _png(out)


def test_show_unknown_sample_is_one_line(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["show", "--model", str(tiny_llava), "--task", f"jsonl:{jsonl_task}", "--strategies", "random", "--sample", "s99", "--out", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown sample 's99'" in err[0], err


# -- gate --------------------------------------------------------------------------------
def _gate(ref: Path, *extra: str) -> int:
    return main(["gate", "--reference", str(ref), *extra])


def _edited(reference: Path, tmp_path: Path, edit: Any) -> Path:
    obj = json.loads(reference.read_text())
    edit(obj)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(obj))
    return out


def _row(obj: dict[str, Any], strategy: str) -> dict[str, Any]:
    return next(r for r in obj["rows"] if r["strategy"] == strategy)


def test_update_creates_the_reference(reference: Path) -> None:
    obj = json.loads(reference.read_text())
    assert obj["version"] == 1 and obj["mode"] == "deterministic"
    assert {"model", "task", "strategies", "keep", "limit", "seed", "device", "dtype"} <= set(obj["config"])
    assert obj["environment"]["device_kind"] == "cpu" and obj["environment"]["dtype"] == "float32"
    assert [r["strategy"] for r in obj["rows"]] == ["baseline", "random", "attention-only"]
    rnd = _row(obj, "random")
    assert rnd["visual_tokens_per_layer"] == [9.0] * 4 and rnd["flops_prefill"] > 0 and set(rnd["predictions"]) == {f"s{i}" for i in range(6)}
    assert obj["tolerances"] == {"max_flips": 2, "margin_tolerance": 0.05, "delta": 0.02, "flops_tolerance": 0.01, "ttft_tolerance": 0.1}


def test_identical_rerun_in_a_fresh_store_passes(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _gate(reference) == 0
    assert "passed" in capsys.readouterr().out


def test_changed_flops_fail_naming_strategy_metric_measured_and_allowed(
    reference: Path, compared: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measured = _row(json.loads(reference.read_text()), "random")["flops_prefill"]
    ref = _edited(reference, tmp_path, lambda o: _row(o, "random").update(flops_prefill=123.0))
    assert _gate(ref, "--store", str(compared["db"])) == 1
    fails = [ln for ln in capsys.readouterr().out.splitlines() if "FAIL" in ln]
    assert fails == [f"gate: FAIL random @ 25.0%: flops_prefill: measured {measured!r}, allowed 123.0 (exactly the reference)"]


def test_checks_on_tokens_and_prediction_flips(reference: Path) -> None:
    from tokenbench.gate import check

    ref = json.loads(reference.read_text())
    assert check(ref, ref, True)[0] == []

    def fails(edit: Any) -> list[str]:
        edited = copy.deepcopy(ref)
        edit(edited)
        return check(edited, ref, True)[0]

    assert fails(lambda o: _row(o, "attention-only").update(visual_tokens_per_layer=[8.0] * 4)) == [
        "attention-only @ 25.0%: visual_tokens_per_layer: measured [9.0, 9.0, 9.0, 9.0], allowed [8.0, 8.0, 8.0, 8.0] (exactly the reference)"
    ]
    low = lambda o: _row(o, "random")["predictions"].update(s0=["zzz", 0.01])  # noqa: E731
    assert fails(low) == []  # a near tie may flip
    high = lambda o: _row(o, "random")["predictions"].update(s0=["zzz", 3.0])  # noqa: E731
    (line,) = fails(high)
    assert line.startswith("random @ 25.0%: prediction[s0]: measured ") and "allowed 'zzz'" in line and "confident" in line
    many = lambda o: _row(o, "random")["predictions"].update({f"s{i}": ["zzz", 0.0] for i in range(3)})  # noqa: E731
    assert fails(many) == ["random @ 25.0%: low-margin prediction flips: measured 3 (s0, s1, s2), allowed at most 2 (reference margin < 0.05 logits)"]


def test_device_or_dtype_mismatch_cannot_compare(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _edited(reference, tmp_path, lambda o: o["environment"].update(dtype="bfloat16"))
    assert _gate(ref) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gate: cannot compare: the reference was measured on cpu in bfloat16")
    assert _gate(reference, "--device", "cuda") == 1
    assert "cannot compare" in capsys.readouterr().out


def test_gate_without_a_reference_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _gate(tmp_path / "none.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "create it with 'tokenbench gate --update" in err[0]


def test_update_prints_a_diff_and_rewrites(reference: Path, compared: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _edited(reference, tmp_path, lambda o: _row(o, "random").update(flops_prefill=123.0))
    assert main(["gate", "--update", "--reference", str(ref), "--store", str(compared["db"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- {ref} (old)\n+++ {ref} (new)\n") and "-" in out and "123.0" in out
    assert json.loads(ref.read_text()) == json.loads(reference.read_text())


def test_statistical_mode_decision_flips_with_delta(reference: Path, compared: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "stat.json"
    assert main(["gate", "--update", "--mode", "statistical", "--reference", str(ref), *compared["args"]]) == 0
    obj = json.loads(ref.read_text())
    assert obj["mode"] == "statistical" and len(_row(obj, "random")["scores"]) == 6
    capsys.readouterr()
    # identical scores on 6 samples: the one-sided lower bound (about -31 points) is below -2 but above -50
    obj["tolerances"]["delta"] = 0.02
    ref.write_text(json.dumps(obj))
    assert _gate(ref, "--store", str(compared["db"])) == 1
    out = capsys.readouterr().out
    assert "gate: FAIL random @ 25.0%: accuracy: measured 0.0%" in out and "non-inferiority, delta=0.02" in out
    assert "TTFT speed-up not checked" in out
    obj["tolerances"]["delta"] = 0.5
    ref.write_text(json.dumps(obj))
    assert _gate(ref, "--store", str(compared["db"])) == 0
    capsys.readouterr()
    from tokenbench.gate import check

    slower = copy.deepcopy(obj)
    _row(slower, "random")["flops_prefill"] /= 2
    (line,) = check(slower, obj, True)[0]
    assert line.startswith("random @ 25.0%: flops_prefill: measured ") and "allowed ≤ " in line


# -- leaderboard -------------------------------------------------------------------------
def _copy_store(src: Path, dst: Path, rename: dict[str, str], kind: Any = None) -> None:
    """Copy a store, renaming strategies and (with ``kind``: record -> kind) relabelling samples."""
    import dataclasses

    from tokenbench.store import Store

    a, b = Store(src), Store(dst)
    for run in a.runs():
        config = {**run.config, "strategy": rename.get(run.config["strategy"], run.config["strategy"])}
        new_id = b.open_run(config)
        for rec in a.samples(run.run_id):
            b.add_sample(new_id, dataclasses.replace(rec, kind=kind(rec)) if kind else rec)
        for name in ("flops", "environment"):
            if a.measurement(run.run_id, name) is not None:
                b.put_measurement(new_id, name, a.measurement(run.run_id, name))
    a.close()
    b.close()


def test_leaderboard_is_reproducible_and_escapes_plugin_names(compared: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "evil.db"
    _copy_store(compared["db"], db, {"random": "evil|name`<b>"})
    assert main(["leaderboard", "--store", str(db), "--out", str(tmp_path / "one")]) == 0
    assert main(["leaderboard", "--store", str(db), "--out", str(tmp_path / "two")]) == 0
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == ["tiny-llava--jsonl.md"]
    one, two = (tmp_path / "one" / files[0]).read_bytes(), (tmp_path / "two" / files[0]).read_bytes()
    assert one == two
    text = one.decode()
    assert "evil\\|name\\`&lt;b&gt;" in text and "<b>" not in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert len(re.findall(r"(?<!\\)\|", line)) in (9, 6), line  # every row keeps its column count
    assert "## Provenance" in text and "tokenbench 0.1.0" in text and "newest run: " in text and "samples: 6" in text
    budget = text.split("## Budget:")[1].split("\n\n")[1].splitlines()
    assert budget[0].startswith("| rank | strategy | n | acc % [95% CI] | Δ vs base, pts [95% CI] | p (Holm) |")
    assert len(budget) == 4  # header, rule, two strategies at 25%


def test_leaderboard_breaks_accuracy_down_by_kind(compared: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "kinds.db"
    _copy_store(compared["db"], db, {}, kind=lambda rec: "even" if int(rec.sample_id[1:]) % 2 == 0 else "odd")
    assert main(["leaderboard", "--store", str(db), "--out", str(tmp_path / "lb")]) == 0
    text = (tmp_path / "lb" / "tiny-llava--jsonl.md").read_text()
    section = text.split("## Accuracy by kind (%)")[1].split("\n\n")[2].splitlines()
    assert section[0] == "| strategy | budget | all | even (n=3) | odd (n=3) |"
    from tokenbench.store import Store

    store = Store(db)
    for line in section[2:]:
        label, budget, overall, even, odd = (c.strip() for c in line.strip("|").split("|"))
        run = next(r for r in store.runs() if r.config["strategy"] == label.split(":")[0] and r.config["budget"] == budget)
        scores = {rec.kind: [] for rec in store.samples(run.run_id)}
        for rec in store.samples(run.run_id):
            scores[rec.kind].append(rec.score)
        assert float(even) == round(100 * sum(scores["even"]) / 3, 1) and float(odd) == round(100 * sum(scores["odd"]) / 3, 1)
        assert float(overall) == round(100 * (sum(scores["even"]) + sum(scores["odd"])) / 6, 1)
    store.close()
    assert len(section) == 2 + 3  # baseline, then the two strategies at 25%


def test_leaderboard_and_frame_from_the_exported_results_file_match_the_store(compared: dict[str, Any], tmp_path: Path) -> None:
    """store -> results file -> store: the same runs, samples, measurements, leaderboard bytes and DataFrame."""
    import tokenbench
    from tokenbench.results_file import open_results
    from tokenbench.store import Store

    exported = tmp_path / "r.jsonl.gz"
    assert main(["runs", "--store", str(compared["db"]), "--export", str(exported)]) == 0
    db, text = Store(compared["db"]), open_results(exported)
    assert db.runs() == text.runs() and len(db.runs()) == 3
    for run in db.runs():
        assert db.samples(run.run_id) == text.samples(run.run_id) and len(db.samples(run.run_id)) == 6
        assert db.measurements(run.run_id) == text.measurements(run.run_id) and {"flops", "environment"} <= set(db.measurements(run.run_id))
    db.close()
    for source, out in ((compared["db"], "from-db"), (exported, "from-text")):
        assert main(["leaderboard", "--store", str(source), "--out", str(tmp_path / out)]) == 0
    (name,) = [p.name for p in (tmp_path / "from-db").iterdir()]
    assert (tmp_path / "from-text" / name).read_bytes() == (tmp_path / "from-db" / name).read_bytes()
    frame = tokenbench.results_frame(exported)
    assert frame.equals(tokenbench.results_frame(compared["db"])) and len(frame) == 18


def test_a_results_file_imported_into_a_working_store_resumes_without_recomputing(
    compared: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenbench.store import Store

    exported, work = tmp_path / "r.jsonl.gz", tmp_path / "work.db"
    assert main(["runs", "--store", str(compared["db"]), "--export", str(exported)]) == 0
    assert main(["runs", "--store", str(work), "--import", str(exported)]) == 0
    capsys.readouterr()
    assert main(["compare", *compared["args"][:-1], str(work), "--quiet", "--format", "json"]) == 0
    assert capsys.readouterr().err.count("resumed, 6 of 6 samples already done") == 3
    assert repr(list(Store(work).dump_runs())) == repr(list(Store(compared["db"]).dump_runs()))  # nothing rewritten


def test_new_reference_defaults_use_registered_strategies() -> None:
    from tokenbench.gate import default_strategies
    from tokenbench.registry import get_registry

    registered = get_registry().names("strategies")
    on_shapes, on_jsonl = default_strategies("shapes").split(","), default_strategies("jsonl:/x.jsonl").split(",")
    # every registered strategy that reduces; the ground-truth oracle only where the task provides ground truth
    assert on_shapes == [n for n in registered if n != "baseline"]
    assert on_jsonl == [n for n in on_shapes if n != "oracle"]


def test_the_published_leaderboard_regenerates_byte_for_byte(tmp_path: Path) -> None:
    """leaderboards/*.md are rendered from the committed results files, and nothing else."""
    from tokenbench.leaderboard import write_leaderboards

    repo = Path(__file__).resolve().parents[1]
    stores = sorted((repo / "leaderboards" / "results").glob("*.jsonl.gz"))
    assert stores, "no committed results file under leaderboards/results"
    for store in stores:  # read into memory: the committed file is never written
        for path in write_leaderboards(store, tmp_path / "out"):
            published = repo / "leaderboards" / path.name
            assert published.is_file(), f"{path.name} is rendered from {store.name} but not published"
            assert path.read_bytes() == published.read_bytes(), f"{published} differs from what {store.name} renders"


def test_leaderboard_defaults_to_a_new_folder_and_says_what_it_replaces(
    compared: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run from the repository's root, the defaults must not write over the committed leaderboards/."""
    from tokenbench.leaderboard import DEFAULT_OUT

    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "leaderboards" / "tiny-llava--jsonl.md"
    committed.parent.mkdir()
    committed.write_text("committed\n", encoding="utf-8")
    assert main(["leaderboard", "--store", str(compared["db"])]) == 0
    assert committed.read_text(encoding="utf-8") == "committed\n"
    new = Path(DEFAULT_OUT) / "tiny-llava--jsonl.md"
    assert DEFAULT_OUT != "leaderboards" and new.is_file()
    assert capsys.readouterr().err == f"tokenbench: wrote {new}\n"
    assert main(["leaderboard", "--store", str(compared["db"])]) == 0
    assert capsys.readouterr().err == f"tokenbench: unchanged: {new}\n"
    assert main(["leaderboard", "--store", str(compared["db"]), "--out", "leaderboards"]) == 0  # named: rewritten, and said so
    assert capsys.readouterr().err == f"tokenbench: replaced {Path('leaderboards') / 'tiny-llava--jsonl.md'}\n"
    assert committed.read_bytes() == new.read_bytes()
