"""Samples with several images or a video, end to end through ``tokenbench compare`` and ``tokenbench show``.

A jsonl task with two images per sample runs on tiny LLaVA-NeXT and InternVL checkpoints,
and a jsonl task with a video (a file decoded with PyAV, and a list of frames) on a tiny
Qwen2-VL, each with every built-in strategy; every per-sample record names its segments
and the tokens each kept. Bad input is one recorded error for that sample, and the run
goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenbench.cli import main
from tokenbench.registry import get_registry

pytest.importorskip("av")


def _strategies() -> str:
    registry = get_registry()
    return ",".join(n for n in registry.names("strategies") if n != "baseline" and not registry.load("strategies", n).needs_ground_truth)


def _compare(model: Path, task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], strategies: str, budget: str = "6") -> tuple[int, dict]:
    code = main(
        [
            "compare",
            "--model",
            str(model),
            "--task",
            f"jsonl:{task}",
            "--strategies",
            strategies,
            "--budget",
            budget,
            "--format",
            "json",
            "--per-sample",
            "--store",
            str(tmp_path / "r.db"),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenbench.testing import write_multi_image_jsonl_task

    return write_multi_image_jsonl_task(tmp_path_factory.mktemp("multi"), n=3)


@pytest.mark.parametrize("family", ["llava_next", "internvl"])
def test_two_images_per_sample_run_with_every_builtin_strategy(family: str, two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenbench import testing

    model = getattr(testing, f"tiny_{family}_checkpoint")(tmp_path / family)
    code, out = _compare(model, two_images, tmp_path, capsys, _strategies())
    assert code == 0
    assert {r["strategy"] for r in out["results"]} == {"baseline", *_strategies().split(",")}
    for row in out["results"]:
        assert (row["n"], row["errors"]) == (3, 0), row
    for run_id, records in out["per_sample"].items():
        for rec in records:
            segments = rec["segments"]
            assert {s["source"] for s in segments} == {0, 1}, run_id  # both images are there
            assert sum(s["tokens"] for s in segments) == rec["tokens_per_layer"][0] or rec["tokens_per_layer"][0] <= 6
            for label, kept in ((lb, [s["kept"][lb] for s in segments]) for lb in segments[0]["kept"]):
                assert sum(kept) <= sum(s["tokens"] for s in segments), label
            if segments[0]["kept"]:  # a reducing strategy: the last stage's per-segment counts add up to the last layer's
                last = max(segments[0]["kept"], key=lambda label: -1 if label == "vision" else int(label.split("@")[1]))
                assert sum(s["kept"][last] for s in segments) == rec["tokens_per_layer"][-1]


@pytest.mark.parametrize("as_file", [True, False], ids=["video-file", "frame-list"])
def test_a_video_per_sample_runs_with_every_builtin_strategy(as_file: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenbench.testing import tiny_qwen2_vl_checkpoint, write_video_jsonl_task

    model = tiny_qwen2_vl_checkpoint(tmp_path / "qwen", layers=3)
    task = write_video_jsonl_task(tmp_path / "video", n=2, as_file=as_file)
    code, out = _compare(model, task, tmp_path, capsys, _strategies(), budget="4")
    assert code == 0
    for row in out["results"]:
        assert (row["n"], row["errors"]) == (2, 0), row
    for records in out["per_sample"].values():
        for rec in records:
            assert rec["segments"] and all(s["kind"] == "frame" for s in rec["segments"])


def test_bad_visual_input_is_one_recorded_error_and_the_run_goes_on(two_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A video on a model that takes none, an unreadable video file: that sample's error, one line; the others answer."""
    from tokenbench.testing import tiny_llava_next_checkpoint

    lines = [json.loads(line) for line in two_images.read_text().splitlines()]
    for line in lines:
        line["images"] = [str(two_images.parent / p) for p in line["images"]]
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    lines.append({"id": "clip", "video": str(tmp_path / "broken.mp4"), "question": "what colour is the square?", "answers": ["red"]})
    task = tmp_path / "mixed.jsonl"
    task.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = tiny_llava_next_checkpoint(tmp_path / "next")
    code, out = _compare(model, task, tmp_path, capsys, "random")
    assert code == 1  # the table is printed; the exit status says that samples failed
    for row in out["results"]:
        assert (row["n"], row["errors"]) == (3, 1), row
    for records in out["per_sample"].values():
        errors = {r["id"]: r["error"] for r in records}
        assert [k for k, e in errors.items() if e] == ["clip"]
        assert "video" in errors["clip"] and "\n" not in errors["clip"]


def test_show_draws_every_segment(two_images: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from tokenbench.testing import tiny_llava_next_checkpoint

    model = tiny_llava_next_checkpoint(tmp_path / "next")
    out = tmp_path / "show.png"
    args = ["show", "--model", str(model), "--task", f"jsonl:{two_images}", "--strategies", "random,pooling", "--sample", "m0", "--budget", "6"]
    assert main([*args, "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_each_kind_of_bad_visual_input_is_that_samples_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On Qwen2-VL (takes video): an unreadable video file, and an image its processor rejects (aspect
    ratio over 200); on a checkpoint without a chat template: two images where its prompt has one slot."""
    from PIL import Image

    from tokenbench.testing import tiny_llava_checkpoint, tiny_qwen2_vl_checkpoint, write_multi_image_jsonl_task

    folder = tmp_path / "data"
    task = write_multi_image_jsonl_task(folder, n=2)
    lines = [json.loads(line) for line in task.read_text().splitlines()]
    (folder / "broken.mp4").write_bytes(b"not a video")
    Image.new("RGB", (420, 2), "red").save(folder / "sliver.png")
    lines += [
        {"id": "broken-video", "video": "broken.mp4", "question": "what colour is the square?", "answers": ["red"]},
        {"id": "sliver", "image": "sliver.png", "question": "what colour is the square?", "answers": ["red"]},
    ]
    task.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out = _compare(tiny_qwen2_vl_checkpoint(tmp_path / "qwen", layers=3), task, tmp_path, capsys, "random")
    assert code == 1
    for records in out["per_sample"].values():
        errors = {r["id"]: r["error"] for r in records if r["error"]}
        assert set(errors) == {"broken-video", "sliver"}, errors
        assert "cannot read video" in errors["broken-video"] and "broken.mp4" in errors["broken-video"]
        assert "aspect ratio" in errors["sliver"]
        assert not any("\n" in e for e in errors.values())

    plain = tiny_llava_checkpoint(tmp_path / "plain")
    for name in ("chat_template.jinja", "chat_template.json"):
        (plain / name).unlink(missing_ok=True)
    (tmp_path / "r.db").unlink()
    code, out = _compare(plain, task, tmp_path, capsys, "random")
    assert code == 1
    for records in out["per_sample"].values():
        errors = {r["id"]: r["error"] for r in records if r["error"]}
        assert {"m0", "m1"} <= set(errors) and "sliver" not in errors
        assert "takes one image, not 2 images" in errors["m0"]
