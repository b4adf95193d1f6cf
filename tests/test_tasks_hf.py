"""The six benchmarks in their Hugging Face form (the ``lmms-lab/*`` datasets lmms-eval reads).

Each fixture is a tiny parquet file in the published schema of its dataset card, placed
where ``hf download ID --repo-type dataset --local-dir PATH`` puts it. Prompts and
scores follow lmms-eval v0.7.2; every expected value is worked out by hand in the comments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hf_parquet import png, run, task, write_parquet
from PIL import Image

from tokenbench.task import TaskDataError
from tokenbench.tasks.lmms_answers import mmbench_letter

SUFFIX = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
POPE_COLUMNS = ("id", "question_id", "question", "answer", "image_source", "image", "category")


def pope_rows(labels: list[tuple[str, str]], image: Any = None) -> list[dict[str, Any]]:
    return [
        {
            "id": str(i),
            "question_id": str(i + 1),
            "question": "Is there a dog in the image? ",
            "answer": answer,
            "image_source": f"COCO_val2014_{i:012d}",
            "image": image or png(),
            "category": category,
        }
        for i, (answer, category) in enumerate(labels)
    ]


POPE_LABELS = [("yes", "random"), ("yes", "random"), ("no", "random"), ("no", "random"), ("yes", "popular"), ("no", "popular")]
POPE_LABELS += [("yes", "adversarial"), ("no", "adversarial")]


# --- POPE ------------------------------------------------------------------------------
def test_pope_from_a_snapshot_scores_as_lmms_eval(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", pope_rows(POPE_LABELS))
    t = task("pope", tmp_path)
    # random: TP, "Yes." is neither yes nor no (wrong, uncounted), FP, TN; popular: TP, TN; adversarial: FN, FP
    preds = ["Yes", "Yes.", "yes", " no ", "yes", "No", "no", "yes"]
    samples, scores, agg = run(t, preds)
    assert [s.id for s in samples[:2]] == ["random-1", "random-2"] and samples[4].kind == "popular"
    assert t.prompt(samples[0], "llava") == "Is there a dog in the image?" + SUFFIX
    assert scores == [1, 0, 0, 1, 1, 1, 0, 0]
    # pooled: TP=2 FP=2 TN=2 FN=1 (+1 other) of 8: acc 4/8, P 2/4, R 2/3, F1 2*(1/2)(2/3)/(7/6) = 4/7
    assert agg["accuracy"] == 50.0 and agg["precision"] == 50.0 and agg["recall"] == pytest.approx(200 / 3)
    assert agg["f1"] == pytest.approx(400 / 7) and agg["yes_ratio"] == 50.0
    # random: TP=1 FP=1 FN=0 -> P 1/2, R 1, F1 2/3; popular F1 1; adversarial TP=0 -> F1 0
    assert agg["random/f1"] == pytest.approx(200 / 3) and agg["popular/f1"] == 100.0 and agg["adversarial/f1"] == 0.0
    assert agg["f1_mean"] == pytest.approx((200 / 3 + 100) / 3)
    assert task("pope", tmp_path, protocol="llava").score(samples[1], "Yes.") == 1.0  # LLaVA's eval_pope reads "Yes." as yes
    assert [s.id for s in task("pope", tmp_path, split="popular").load()] == ["popular-5", "popular-6"]


def test_pope_from_save_to_disk(tmp_path: Path) -> None:
    import datasets

    rows = pope_rows([("no", "random"), ("yes", "adversarial")])
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "pope"))
    samples = task("pope", tmp_path / "pope", split="adversarial").load()
    assert [(s.id, s.answers) for s in samples] == [("adversarial-2", ("yes",))]
    assert samples[0].load_image().size == (6, 4)


def test_a_missing_column_names_it_and_the_schema(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "category"} for r in pope_rows(POPE_LABELS[:2])]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    with pytest.raises(TaskDataError) as e:
        task("pope", tmp_path).load()
    msg = str(e.value)
    assert "\n" not in msg and "missing column 'category'" in msg and "expected schema of lmms-lab/POPE: question_id, question, answer, image, category" in msg


def test_a_corrupt_image_fails_only_its_own_sample(tmp_path: Path) -> None:
    rows = pope_rows(POPE_LABELS[:3])
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    samples = task("pope", tmp_path).load()
    assert samples[0].load_image().getpixel((0, 0)) == (255, 0, 0) and samples[2].load_image().size == (6, 4)
    with pytest.raises(TaskDataError) as e:
        samples[1].load_image()
    assert "\n" not in str(e.value) and "row 1" in str(e.value) and "not a readable image" in str(e.value)


def test_loading_forty_samples_decodes_no_image_until_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_parquet(tmp_path / "data" / "test-00000-of-00002.parquet", pope_rows([("yes", "random")] * 20))
    write_parquet(tmp_path / "data" / "test-00001-of-00002.parquet", pope_rows([("no", "popular")] * 20))
    opened: list[Any] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    samples = task("pope", tmp_path).load()
    assert len(samples) == 40 and opened == []
    samples[0].load_image(), samples[39].load_image(), samples[39].load_image()
    assert len(opened) == 3  # once per call, nothing else


def test_no_path_offline_with_an_empty_cache_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t = task("pope")
    assert t.path is None and not t.needs_path
    with pytest.raises(TaskDataError) as e:
        t.load()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("lmms-lab/POPE: split 'test' is not in the Hugging Face cache")
    assert "HF_DATASETS_OFFLINE=1 forbids fetching it" in msg and "hf download lmms-lab/POPE --repo-type dataset" in msg and "--task pope:PATH" in msg


def test_protocol_option_is_checked() -> None:
    with pytest.raises(ValueError, match="protocol"):
        task("gqa", protocol="vlmevalkit")
    assert task("mme", protocol="LLaVA").options["protocol"] == "llava"


# --- GQA -------------------------------------------------------------------------------
def write_gqa(root: Path) -> None:
    def q(qid: str, image: str, question: str, answer: str, structural: str) -> dict[str, Any]:
        types = {"structural": structural, "semantic": "attr", "detailed": "x"}
        return {"id": qid, "imageId": image, "question": question, "answer": answer, "fullAnswer": f"{answer}.", "isBalanced": True, "types": types}

    questions = [
        q("201", "n1", "Is the ball red?", "yes", "verify"),
        q("202", "n1", "What is on the table?", "table cloth", "query"),
        q("203", "n2", "Which side is the cup on?", "left", "choose"),
    ]
    write_parquet(root / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet", questions)
    write_parquet(root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet", [{"id": "n1", "image": png("red")}, {"id": "n2", "image": png("blue")}])


def test_gqa_joins_the_two_configs_and_scores_as_lmms_eval(tmp_path: Path) -> None:
    write_gqa(tmp_path)
    t = task("gqa", tmp_path)
    # "Yes." -> "yes" (punctuation removed); "The table-cloth" -> "the tablecloth" != "table cloth"; " Left" -> "left"
    samples, scores, agg = run(t, ["Yes.", "The table-cloth", " Left"])
    assert [s.id for s in samples] == ["201", "202", "203"] and [s.kind for s in samples] == ["verify", "query", "choose"]
    assert t.prompt(samples[1], "llava") == "What is on the table?" + SUFFIX
    assert scores == [1.0, 0.0, 1.0] and agg["accuracy"] == pytest.approx(200 / 3) and agg["query/accuracy"] == 0.0
    assert samples[2].load_image().getpixel((0, 0)) == (0, 0, 255)  # n2's image
    assert task("gqa", tmp_path, protocol="llava").score(samples[1], "The table-cloth") == 1.0  # VQA normalisation drops the article


def test_gqa_without_the_image_config_names_it(tmp_path: Path) -> None:
    write_gqa(tmp_path)
    (tmp_path / "testdev_balanced_images" / "testdev-00000-of-00001.parquet").unlink()
    with pytest.raises(TaskDataError) as e:
        task("gqa", tmp_path).load()
    assert "\n" not in str(e.value) and "testdev_balanced_images/testdev-*.parquet" in str(e.value)


# --- MME -------------------------------------------------------------------------------
def test_mme_from_a_snapshot(tmp_path: Path) -> None:
    def row(qid: str, question: str, answer: str, category: str) -> dict[str, Any]:
        return {"question_id": qid, "image": png(), "question": question, "answer": answer, "category": category}

    rows = [
        row("existence/000000001.jpg", "Is there a ball in this image? Please answer yes or no.", "Yes", "existence"),
        row("existence/000000001.jpg", "Is there a cat in this image? Please answer yes or no.", "No", "existence"),
        row("code_reasoning/0020.png", "Will the code print 3? Please answer yes or no.", "Yes", "code_reasoning"),
        row("code_reasoning/0020.png", "Will the code print 4? Please answer yes or no.", "No", "code_reasoning"),
    ]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    t = task("mme", tmp_path)
    # "Yes." -> yes, "N" -> no (a lone letter counts), "y" -> yes, "Yes" on a No: wrong
    samples, scores, agg = run(t, ["Yes.", "N", "y", "Yes"])
    assert [s.id for s in samples] == ["existence/000000001.jpg/0", "existence/000000001.jpg/1", "code_reasoning/0020.png/0", "code_reasoning/0020.png/1"]
    assert samples[0].meta["group"] == samples[1].meta["group"] != samples[2].meta["group"]
    assert t.prompt(samples[0], "llava") == "Is there a ball in this image?" + SUFFIX
    assert scores == [1.0, 1.0, 1.0, 0.0]
    # existence: acc 100 + acc+ 100; code_reasoning: acc 50 + acc+ 0
    assert (agg["perception"], agg["cognition"], agg["total"]) == (200.0, 50.0, 250.0)
    assert task("mme", tmp_path, protocol="llava").score(samples[1], "N") == 0.0  # MME's calculation.py: "n" is other


# --- ScienceQA-IMG -----------------------------------------------------------------------
def test_scienceqa_img_from_a_snapshot(tmp_path: Path) -> None:
    def row(question: str, choices: list[str], answer: int, hint: str, subject: str) -> dict[str, Any]:
        extra = {"task": "closed choice", "grade": "grade3", "topic": "t", "category": "c", "skill": "s", "lecture": "", "solution": ""}
        return {"image": png(), "question": question, "choices": choices, "answer": answer, "hint": hint, "subject": subject, **extra}

    rows = [
        row("Which animal can fly?", ["dog", "bird"], 1, "Look at the picture.", "natural science"),
        row("Which state is highlighted?", ["Ohio", "Utah", "Iowa"], 2, "", "social science"),
    ]
    write_parquet(tmp_path / "ScienceQA-IMG" / "test-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "ScienceQA-FULL" / "test-00000-of-00001.parquet", rows * 2)  # another config: ignored
    t = task("scienceqa_img", tmp_path)
    samples, scores, agg = run(t, ["B", "(C) Iowa"])
    assert [(s.id, s.answers, s.kind) for s in samples] == [("0", ("B",), "natural science"), ("1", ("C",), "social science")]
    assert t.prompt(samples[0], "llava") == "Context: Look at the picture.\nWhich animal can fly?\nA. dog\nB. bird" + LETTER
    assert t.prompt(samples[1], "llava") == "Which state is highlighted?\nA. Ohio\nB. Utah\nC. Iowa" + LETTER
    assert scores == [1.0, 0.0] and agg["accuracy"] == 50.0  # lmms-eval reads "(C) Iowa" as wrong
    assert [t.score(samples[1], p) for p in ("c", "C. Iowa", "c. iowa", "Iowa", "C)")] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert task("scienceqa_img", tmp_path, protocol="llava").score(samples[1], "(C) Iowa") == 1.0


# --- TextVQA -----------------------------------------------------------------------------
def test_textvqa_val_from_a_snapshot(tmp_path: Path) -> None:
    def row(qid: int, question: str, answers: list[str], tokens: list[str]) -> dict[str, Any]:
        extra = {"question_tokens": question.split(), "image_width": 6, "image_height": 4, "flickr_original_url": "", "flickr_300k_url": ""}
        image_id = f"{qid:016x}"
        return {"image_id": image_id, "question_id": qid, "question": question, "image": png(), "answers": answers, **extra} | {
            "image_classes": [],
            "set_name": "val",
            "ocr_tokens": tokens,
        }

    rows = [row(34602, "what brand is THIS?", ["coca cola"] * 2 + ["coke"] * 8, ["COCA", "cola"]), row(34603, "is it open?", ["yes"] + ["no"] * 9, [])]
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", rows)
    t = task("textvqa_val", tmp_path)
    # "Coca-Cola." -> "coca cola": 2 of 10 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6; "Yes": 1 of 10 -> 9 * (1/3) / 10 = 0.3
    samples, scores, agg = run(t, ["Coca-Cola.", "Yes"])
    assert scores == [pytest.approx(0.6), pytest.approx(0.3)] and agg["accuracy"] == pytest.approx(45.0)
    assert t.prompt(samples[0], "llava") == "What brand is this?" + SUFFIX  # str.capitalize, as lmms-eval
    ocr = task("textvqa_val", tmp_path, ocr="true")
    assert ocr.prompt(samples[0], "llava") == "What brand is this?\nReference OCR token: COCA, cola" + SUFFIX
    assert task("textvqa_val", tmp_path, protocol="llava").prompt(samples[0], "llava") == "what brand is THIS?" + SUFFIX


# --- MMBench -----------------------------------------------------------------------------
def test_mmbench_en_dev_from_a_snapshot_with_circular_copies(tmp_path: Path) -> None:
    def row(index: str, question: str, hint: str | None, options: list[str], answer: str, category: str) -> dict[str, Any]:
        cells = dict(zip("ABCD", [*options, None, None]))
        return {"index": index, "question": question, "hint": hint, "answer": answer, **cells, "category": category} | {
            "image": png(),
            "source": "s",
            "L2-category": "l2",
            "comment": None,
            "split": "dev",
        }

    rows = [
        row("0", "What colour is the box?", None, ["red", "blue"], "B", "attribute_recognition"),
        row("1", "Is the sky visible?", "Look up.", ["yes", "no"], "A", "scene"),
        row("1000000", "What colour is the box?", None, ["blue", "red"], "A", "attribute_recognition"),
        row("1000001", "Is the sky visible?", "Look up.", ["no", "yes"], "B", "scene"),
    ]
    write_parquet(tmp_path / "en" / "dev-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "cn" / "dev-00000-of-00001.parquet", rows[:1])  # another config: ignored
    t = task("mmbench_en_dev", tmp_path)
    samples = list(t.load())
    assert [s.id for s in samples] == ["0-r0", "1-r0", "0-r1", "1-r1"]
    assert t.prompt(samples[1], "llava") == "Look up. Is the sky visible? There are several options:\nA. yes\nB. no\n" + LETTER
    assert t.prompt(samples[0], "llava") == "What colour is the box? There are several options:\nA. red\nB. blue\n" + LETTER
    # 0-r0 "B" right; 1-r0 "yes" names option A's text; 0-r1 "(A)." a letter token; 1-r1 "A" but the answer is B
    preds = ["B", "yes", "The answer is (A).", "A"]
    scores = [t.score(s, p) for s, p in zip(samples, preds)]
    assert scores == [1.0, 1.0, 1.0, 0.0]
    agg = t.aggregate(samples, scores, preds)
    assert agg["accuracy"] == 50.0 and agg["attribute_recognition/accuracy"] == 100.0 and agg["scene/accuracy"] == 0.0
    assert agg["rotation0_accuracy"] == 100.0


def test_mmbench_letter_reading_follows_lmms_eval() -> None:
    options = {"A": "dog", "B": "cat", "C": "cow"}
    assert mmbench_letter("A cat is shown", options) == "B"  # a leading "A" in a long answer may be an article: the option text decides
    assert mmbench_letter("C", options) == "C" and mmbench_letter("(b)", options) is None
    assert mmbench_letter("I think it is a cow, option C.", options) == "C"  # "C." as a token
    assert mmbench_letter("dog or cat", options) is None  # two option texts, no letter
    # extract_mcq_answer's answer phrases include the Chinese/Korean/Japanese ones: the phrase "答案是" (rank 7)
    # beats the parenthesised "(A)" (rank 6); "是B" is not a standalone ending because CJK characters are letters
    assert mmbench_letter("(A)不对, 答案是B", options) == "B"


def test_compare_records_a_corrupt_image_as_that_samples_error_and_goes_on(tiny_llava: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tokenbench.cli import main

    rows = pope_rows(POPE_LABELS[:3])
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    write_parquet(tmp_path / "pope" / "data" / "test-00000-of-00001.parquet", rows)
    args = ["compare", "--model", str(tiny_llava), "--task", f"pope:{tmp_path / 'pope'}", "--strategies", "random", "--keep", "0.25"]
    code = main([*args, "--format", "json", "--per-sample", "--store", str(tmp_path / "r.db"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1  # the table is printed; the exit status says that samples failed (docs/plugins.md)
    assert "baseline @ all: 1 of 3 samples failed; first: random-2: " in captured.err
    out = json.loads(captured.out)
    for row in out["results"]:  # baseline and random: two samples answered, the corrupt one recorded
        assert (row["n"], row["errors"]) == (2, 1), row
    for records in out["per_sample"].values():
        errors = {r["id"]: r["error"] for r in records}
        assert len(errors) == 3 and [e for e in errors.values() if e is None] == [None, None]
        assert "row 1" in errors["random-2"] and "not a readable image" in errors["random-2"] and "\n" not in errors["random-2"]
