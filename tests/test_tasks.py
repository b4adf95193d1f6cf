"""The real benchmarks, each on a tiny fixture written in its published layout.

Every expected metric value below is computed by hand (see the comments), not by the
code under test.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import tokenbench
from tokenbench.answers import mme_yes_no, option_letter, pope_yes_no, vqa_accuracy, vqa_normalize
from tokenbench.task import Sample, TaskDataError, stratified_subset

SUFFIX = "\nAnswer the question using a single word or phrase."


def draw(path: Path, colour: str = "red", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (24, 16), "white")
    ImageDraw.Draw(im).ellipse((4, 2, 18, 14), fill=colour)
    im.save(path, format=fmt)
    return path


def task(name: str, path: Path | str, **options):
    return tokenbench.get_registry().load("tasks", name)(str(path), **options)


def run(t, predictions):
    samples = list(t.load())
    scores = [t.score(s, p) for s, p in zip(samples, predictions)]
    return samples, scores, t.aggregate(samples, scores, predictions)


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "expected layout" in msg
    for n in needles:
        assert n in msg
    return msg


# --- POPE ------------------------------------------------------------------------------
def write_pope(root: Path, sub: str = "") -> None:
    labels = {"random": ["yes", "yes", "no", "no"], "popular": ["yes", "no"], "adversarial": ["yes", "no"]}
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    qid = 0
    for split, ls in labels.items():
        lines = []
        for label in ls:
            qid += 1
            image = f"COCO_val2014_{qid:012d}.jpg"
            draw(root / "val2014" / image)
            lines.append(json.dumps({"question_id": qid, "image": image, "text": "Is there a dog in the image?", "label": label}))
        (folder / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")


def test_pope_all_splits_metrics(tmp_path):
    write_pope(tmp_path, "output/coco")
    preds = [
        "Yes.",
        "No, there is not.",
        "Yes, there is a dog.",
        "no",  # random: TP FN FP TN
        "Yes",
        "There is no cat.",  # popular: TP TN
        "I think yes",
        "yes",
    ]  # adversarial: TP FP
    t = task("pope", tmp_path, protocol="llava")  # LLaVA's eval_pope reading; lmms-eval's: tests/test_tasks_hf.py
    samples, scores, agg = run(t, preds)
    assert [s.kind for s in samples] == ["random"] * 4 + ["popular"] * 2 + ["adversarial"] * 2
    assert t.prompt(samples[0], "llava") == "Is there a dog in the image?" + SUFFIX
    assert scores == [1, 0, 0, 1, 1, 1, 1, 0]
    # random: TP=FN=FP=TN=1 -> everything 50
    for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert agg[f"random/{k}"] == pytest.approx(50.0)
    assert agg["popular/f1"] == pytest.approx(100.0) and agg["popular/yes_ratio"] == pytest.approx(50.0)
    # adversarial: TP=1, FP=1 -> P=0.5, R=1, F1=2*0.5/1.5=2/3, yes-ratio 100
    assert agg["adversarial/precision"] == pytest.approx(50.0) and agg["adversarial/recall"] == pytest.approx(100.0)
    assert agg["adversarial/f1"] == pytest.approx(200 / 3) and agg["adversarial/yes_ratio"] == pytest.approx(100.0)
    assert agg["f1_mean"] == pytest.approx((50 + 100 + 200 / 3) / 3)


def test_pope_single_split_and_images_option(tmp_path):
    write_pope(tmp_path / "data")
    moved = tmp_path / "coco_images"
    (tmp_path / "data" / "val2014").rename(moved)
    t = task("pope", tmp_path / "data", split="random", images=str(moved), protocol="llava")
    samples, _, agg = run(t, ["yes", "yes", "yes", "no"])  # TP TP FP TN
    assert len(samples) == 4 and {s.kind for s in samples} == {"random"}
    assert agg["precision"] == pytest.approx(200 / 3) and agg["recall"] == pytest.approx(100.0)
    assert agg["f1"] == pytest.approx(80.0) and agg["yes_ratio"] == pytest.approx(75.0) and agg["accuracy"] == 75.0
    assert t.describe()["options"] == {"images": str(moved), "protocol": "llava", "split": "random"}
    with pytest.raises(ValueError, match="split"):
        task("pope", tmp_path, split="hard")


def test_pope_answer_parsing_follows_official_script():
    assert pope_yes_no("No") == "no" and pope_yes_no("no, it is not") == "no"
    assert pope_yes_no("Yes. But there is no cat.") == "yes"  # only the first sentence counts
    assert pope_yes_no("There is not a dog") == "no" and pope_yes_no("Nope") == "yes"
    assert pope_yes_no("NO") == "yes"  # the official word test is case-sensitive


def test_pope_missing_files(tmp_path):
    write_pope(tmp_path)
    (tmp_path / "coco_pope_popular.json").unlink()
    with pytest.raises(TaskDataError) as e:
        task("pope", tmp_path).load()
    one_line_error(e, "coco_pope_popular.json", "file not found")
    next((tmp_path / "val2014").glob("*.jpg")).unlink()
    with pytest.raises(TaskDataError) as e:
        task("pope", tmp_path, split="random").load()
    one_line_error(e, "COCO_val2014_", "image not found")
    (tmp_path / "coco_pope_adversarial.json").write_text('{"question_id": 1, "image": "x.jpg", "text": "q", "label": "maybe"}\n')
    with pytest.raises(TaskDataError) as e:
        task("pope", tmp_path, split="adversarial").load()
    one_line_error(e, "coco_pope_adversarial.json:1", "maybe")


def test_pope_hub_dataset(tmp_path, monkeypatch):
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["test"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # not importable
    with pytest.raises(TaskDataError) as e:
        task("pope", tmp_path).load()
    one_line_error(e, "datasets", str(tmp_path))  # a real save_to_disk copy: tests/test_tasks_hf.py


# --- GQA -------------------------------------------------------------------------------
def write_gqa(root: Path) -> None:
    qs = {
        "201": {"imageId": "n1", "question": "Is the ball red?", "answer": "yes", "types": {"structural": "verify", "semantic": "attr", "detailed": "x"}},
        "202": {"imageId": "n1", "question": "What is on the table?", "answer": "table cloth", "types": {"structural": "query"}},
        "203": {"imageId": "n2", "question": "Which side is the cup on?", "answer": "left", "types": {"structural": "query"}},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "testdev_balanced_questions.json").write_text(json.dumps(qs))
    draw(root / "images" / "n1.jpg")
    draw(root / "images" / "n2.jpg", "blue")


def test_gqa_exact_match_after_normalisation(tmp_path):
    write_gqa(tmp_path)
    t = task("gqa", tmp_path, protocol="llava")
    samples, scores, agg = run(t, ["Yes.", "The table-cloth", "right"])
    assert [s.kind for s in samples] == ["verify", "query", "query"]
    assert t.prompt(samples[0], "qwen2_5_vl") == "Is the ball red?" + SUFFIX
    assert scores == [1.0, 1.0, 0.0]  # "The table-cloth" -> "table cloth"
    assert agg["accuracy"] == pytest.approx(200 / 3)
    assert agg["verify/accuracy"] == 100.0 and agg["query/accuracy"] == 50.0


def test_gqa_malformed_and_missing(tmp_path):
    with pytest.raises(TaskDataError) as e:
        task("gqa", tmp_path).load()
    one_line_error(e, "testdev_balanced_questions.json", "file not found")
    (tmp_path / "testdev_balanced_questions.json").write_text('{"201": {"imageId": "n1",')
    with pytest.raises(TaskDataError) as e:
        task("gqa", tmp_path).load()
    one_line_error(e, "testdev_balanced_questions.json", "not valid JSON")
    (tmp_path / "testdev_balanced_questions.json").write_text('{"201": {"imageId": "n1", "question": "q"}}')
    with pytest.raises(TaskDataError) as e:
        task("gqa", tmp_path).load()
    one_line_error(e, "question 201", "answer")


def test_vqa_normalisation():
    assert vqa_normalize("The Two dogs.") == "2 dogs"
    assert vqa_normalize("3.5") == "3.5" and vqa_normalize("1,000") == "1000"
    assert vqa_normalize("Coca-Cola") == "coca cola" and vqa_normalize("isnt") == "isn't"
    assert vqa_normalize("an apple!") == "apple"


# --- MME -------------------------------------------------------------------------------
def write_mme(root: Path) -> None:
    rel = root / "MME_Benchmark_release_version"
    for stem in ("000000001", "000000002"):  # flat layout
        draw(rel / "existence" / f"{stem}.jpg")
        (rel / "existence" / f"{stem}.txt").write_text(
            "Is there a ball in this image? Please answer yes or no.\tYes\nIs there a cat in this image? Please answer yes or no.\tNo\n"
        )
    draw(rel / "artwork" / "images" / "10002.png", "green", "PNG")  # nested layout, .png
    (rel / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (rel / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork by Monet? Please answer yes or no.\tNo\nIs this artwork by Turner? Please answer yes or no.\tYes\n"
    )
    draw(rel / "commonsense_reasoning" / "0001.png", fmt="PNG")
    (rel / "commonsense_reasoning" / "0001.txt").write_text("Should I wear a coat?\tYes\nIs it summer?\tNo\n")


def test_mme_official_score(tmp_path):
    write_mme(tmp_path)
    t = task("mme", tmp_path)  # the parent of MME_Benchmark_release_version
    preds = [
        "Yes",
        "No",
        "Yes",
        "Yes",  # existence: 3 of 4 right, 1 of 2 images fully right
        "No, it is not.",
        "The answer is yes",  # artwork: 1 of 2 ("other" is wrong), 0 images
        "yes",
        "no",
    ]  # commonsense: 2 of 2
    samples, scores, agg = run(t, preds)
    assert [s.kind for s in samples] == ["existence"] * 4 + ["artwork"] * 2 + ["commonsense_reasoning"] * 2
    assert samples[0].meta["group"] == samples[1].meta["group"] != samples[2].meta["group"]
    assert t.prompt(samples[0], "llava") == "Is there a ball in this image?" + SUFFIX
    assert agg["existence/acc"] == 75.0 and agg["existence/acc_plus"] == 50.0 and agg["existence/score"] == 125.0
    assert agg["artwork/acc"] == 50.0 and agg["artwork/acc_plus"] == 0.0 and agg["artwork/score"] == 50.0
    assert agg["commonsense_reasoning/score"] == 200.0
    assert (agg["perception"], agg["cognition"], agg["total"]) == (175.0, 200.0, 375.0)
    assert mme_yes_no("Yes, there is") == "yes" and mme_yes_no(" no") == "no" and mme_yes_no("I cannot tell") == "other"


def test_mme_malformed_and_missing(tmp_path):
    with pytest.raises(TaskDataError) as e:
        task("mme", tmp_path).load()
    one_line_error(e, "no MME subtask folder")
    write_mme(tmp_path)
    bad = tmp_path / "MME_Benchmark_release_version" / "commonsense_reasoning" / "0001.txt"
    bad.write_text("Should I wear a coat?\tYes\nIs it summer? No\n")
    with pytest.raises(TaskDataError) as e:
        task("mme", tmp_path).load()
    one_line_error(e, "0001.txt:2", "question<TAB>Yes|No")
    bad.write_text("Should I wear a coat?\tYes\n")
    (tmp_path / "MME_Benchmark_release_version" / "artwork" / "images" / "10002.png").unlink()
    with pytest.raises(TaskDataError) as e:
        task("mme", tmp_path).load()
    one_line_error(e, "10002.txt", "no image 10002")


# --- ScienceQA-IMG -----------------------------------------------------------------------
def write_sqa(root: Path, images: str = "images/test") -> None:
    def p(question, choices, answer, image, split, subject, hint=""):
        return {
            "question": question,
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "image": image,
            "split": split,
            "subject": subject,
            "grade": "grade3",
            "task": "closed choice",
        }

    problems = {
        "5": p("Which animal can fly?", ["dog", "bird"], 1, "image.png", "test", "natural science", "Look at the picture."),
        "6": p("What is 2+2?", ["3", "4"], 1, None, "test", "natural science"),  # no image: dropped
        "7": p("Which is a map?", ["a", "b"], 0, "image.png", "val", "social science"),  # not test: dropped
        "9": p("Which state is highlighted?", ["Ohio", "Utah", "Iowa"], 2, "image.png", "test", "social science"),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": [], "val": ["7"], "test": ["5", "6", "9"]}))
    for pid in ("5", "7", "9"):
        draw(root / images / pid / "image.png", fmt="PNG")


@pytest.mark.parametrize("images", ["images/test", "test"])
def test_scienceqa_img(tmp_path, images):
    write_sqa(tmp_path, images)
    t = task("scienceqa_img", tmp_path, protocol="llava")
    samples, scores, agg = run(t, ["B", "(C) Iowa"])
    assert [(s.id, s.answers, s.kind) for s in samples] == [("5", ("B",), "natural science"), ("9", ("C",), "social science")]
    assert t.prompt(samples[0], "llava") == (
        "Context: Look at the picture.\nWhich animal can fly?\nA. dog\nB. bird\nAnswer with the option's letter from the given choices directly."
    )
    assert t.prompt(samples[1], "llava").startswith("Which state is highlighted?\nA. Ohio\nB. Utah\nC. Iowa\n")
    assert scores == [1.0, 1.0] and agg["accuracy"] == 100.0
    s = samples[1]
    assert [t.score(s, p) for p in ("C", "C.", "(c)", "C. Iowa", "Iowa", "B", "I am not sure", "")] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert option_letter("A dog.", ["cat", "a dog"]) == "B"


def test_scienceqa_missing_and_malformed(tmp_path):
    with pytest.raises(TaskDataError) as e:
        task("scienceqa_img", tmp_path).load()
    one_line_error(e, "problems.json", "file not found")
    write_sqa(tmp_path)
    (tmp_path / "images" / "test" / "9" / "image.png").unlink()
    with pytest.raises(TaskDataError) as e:
        task("scienceqa_img", tmp_path).load()
    one_line_error(e, "9/image.png", "image not found")
    (tmp_path / "pid_splits.json").write_text('{"test": ["5", "42"]}')
    with pytest.raises(TaskDataError) as e:
        task("scienceqa_img", tmp_path).load()
    one_line_error(e, "pid_splits.json", "'42'")


# --- TextVQA -----------------------------------------------------------------------------
def write_textvqa(root: Path) -> None:
    data = [
        {
            "question_id": 34602,
            "question": "what brand is this?",
            "image_id": "003a8ae2ef43b901",
            "answers": ["coca cola"] * 2 + ["coke"] * 8,
            "ocr_tokens": ["COCA", "cola"],
        },
        {"question_id": 34603, "question": "is it open?", "image_id": "0054c91397f2fe05", "answers": ["yes"] + ["no"] * 9},
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    (root / "TextVQA_Rosetta_OCR_v0.2_val.json").write_text(json.dumps({"data": [{"image_id": "0054c91397f2fe05", "ocr_tokens": ["OPEN"]}]}))
    for d in data:
        draw(root / "train_images" / f"{d['image_id']}.jpg")


def test_textvqa_official_vqa_accuracy(tmp_path):
    write_textvqa(tmp_path)
    t = task("textvqa_val", tmp_path, protocol="llava")
    # "Coca-Cola." -> "coca cola", 2 of 10 humans: leave out one of the 2 -> 1/3 (x2),
    # one of the other 8 -> 2/3 (x8): (2/3 + 16/3) / 10 = 0.6.
    # "Yes": 1 of 10: leave it out -> 0, leave out another -> 1/3 (x9): 0.3.
    samples, scores, agg = run(t, ["Coca-Cola.", "Yes"])
    assert scores == [pytest.approx(0.6), pytest.approx(0.3)]
    assert agg["accuracy"] == pytest.approx(45.0)
    assert t.metric_kind == "continuous" and samples[0].kind == "textvqa"
    assert t.prompt(samples[0], "llava") == "what brand is this?" + SUFFIX
    assert vqa_accuracy("coke", samples[0].answers) == 1.0
    assert vqa_accuracy("coca cola", ["coca cola"] * 3 + ["coke"] * 7) == pytest.approx(0.9)


def test_textvqa_ocr_option(tmp_path):
    write_textvqa(tmp_path)
    t = task("textvqa_val", tmp_path, ocr="true", protocol="llava")
    samples = t.load()
    assert t.describe()["options"]["ocr"] is True
    assert t.prompt(samples[0], "llava") == "what brand is this?\nReference OCR token: COCA, cola" + SUFFIX
    assert t.prompt(samples[1], "qwen2_5_vl") == "is it open?\nReference OCR token: OPEN" + SUFFIX  # from the Rosetta file
    assert task("textvqa_val", tmp_path, ocr="false").describe()["options"]["ocr"] is False
    with pytest.raises(ValueError, match="ocr"):
        task("textvqa_val", tmp_path, ocr="maybe")
    (tmp_path / "train_images" / "0054c91397f2fe05.jpg").unlink()
    with pytest.raises(TaskDataError) as e:
        t.load()
    one_line_error(e, "0054c91397f2fe05.jpg", "train_images")


# --- MMBench -----------------------------------------------------------------------------
def b64_image(colour: str) -> str:
    buf = io.BytesIO()
    draw_im = Image.new("RGB", (20, 10), colour)
    draw_im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_mmbench(root: Path, rows: list[list[str]] | None = None) -> Path:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "source", "split"]
    rows = rows or [
        ["0", "What colour is the box?", "nan", "red", "blue", "green", "white", "B", "attribute_recognition", "fine", b64_image("blue"), "s", "dev"],
        ["1", "Is the sky visible?", "Look up.", "yes", "no", "", "", "A", "scene", "coarse", "0", "s", "dev"],
    ]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "mmbench_dev_en_20231003.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return path


def test_mmbench_circular(tmp_path):
    write_mmbench(tmp_path)
    t = task("mmbench_en_dev", tmp_path, protocol="llava")
    samples = list(t.load())
    assert [s.id for s in samples] == ["0-r0", "0-r1", "0-r2", "0-r3", "1-r0", "1-r1"]
    assert [s.meta["group"] for s in samples] == [0, 0, 0, 0, 1, 1]
    # rotation r shows options[r:] + options[:r]; "blue" (B) moves to B, A, D, C
    assert [s.answers[0] for s in samples] == ["B", "A", "D", "C", "A", "B"]
    assert samples[1].choices == ("blue", "green", "white", "red")
    assert t.prompt(samples[4], "llava") == ("Look up.\nIs the sky visible?\nA. yes\nB. no\nAnswer with the option's letter from the given choices directly.")
    assert t.prompt(samples[0], "llava").startswith("What colour is the box?\nA. red\n")  # "nan" hint omitted
    assert samples[4].load_image().getpixel((0, 0)) == (0, 0, 255)  # image shared by index reference
    # question 0: rotation 2 answered "A" (green), wrong; rotation 3 by option text.
    # question 1: its second rotation is wrong.
    preds = ["B", "A", "A", "blue", "A", "A"]
    scores = [t.score(s, p) for s, p in zip(samples, preds)]
    assert scores == [1, 1, 0, 1, 1, 0]
    agg = t.aggregate(samples, scores, preds)
    assert agg["accuracy"] == 0.0 and agg["rotation0_accuracy"] == 100.0
    scores[2] = 1.0
    agg = t.aggregate(samples, scores, preds)
    assert agg["accuracy"] == 50.0 and agg["attribute_recognition/accuracy"] == 100.0 and agg["scene/accuracy"] == 0.0


def test_mmbench_single_pass_and_legacy_copies(tmp_path):
    write_mmbench(tmp_path)
    t = task("mmbench_en_dev", tmp_path / "mmbench_dev_en_20231003.tsv", circular="false")
    samples, scores, agg = run(t, ["B", "A"])
    assert [s.id for s in samples] == ["0", "1"] and agg["accuracy"] == 100.0
    img = b64_image("red")
    rows = [["0", "Q?", "", "x", "y", "", "", "A", "c", "l", img, "s", "dev"], ["1000000", "Q?", "", "y", "x", "", "", "B", "c", "l", img, "s", "dev"]]
    write_mmbench(tmp_path / "legacy", rows)
    samples, scores, agg = run(task("mmbench_en_dev", tmp_path / "legacy"), ["A", "A"])
    assert [(s.id, s.meta["rotation"]) for s in samples] == [("0-r0", 0), ("0-r1", 1)]
    assert scores == [1.0, 0.0] and agg["accuracy"] == 0.0


def test_mmbench_malformed(tmp_path):
    with pytest.raises(TaskDataError) as e:
        task("mmbench_en_dev", tmp_path / "nope.tsv").load()
    one_line_error(e, "nope.tsv", "file not found")
    write_mmbench(tmp_path, [["0", "Q?", "", "x", "y", "", "", "A", "c", "l", "not base64 at all!!", "s", "dev"]])
    with pytest.raises(TaskDataError) as e:
        task("mmbench_en_dev", tmp_path).load()
    one_line_error(e, "mmbench_dev_en_20231003.tsv:2", "base64")
    write_mmbench(tmp_path, [["0", "Q?", "", "x", "y", "", "", "E", "c", "l", b64_image("red"), "s", "dev"]])
    with pytest.raises(TaskDataError) as e:
        task("mmbench_en_dev", tmp_path).load()
    one_line_error(e, ":2", "'E'")


# --- stratified --limit ---------------------------------------------------------------------
def make(n_by_kind: dict[str, int]) -> list[Sample]:
    out, i = [], 0
    for kind, n in n_by_kind.items():
        for _ in range(n):
            out.append(Sample(id=str(i), image=None, question="q", answers=("a",), kind=kind))
            i += 1
    return out


def test_stratified_subset_proportional_and_deterministic():
    samples = make({"a": 60, "b": 30, "c": 10})
    sub = stratified_subset(samples, 10, seed=3)
    assert [s.kind for s in sub].count("a") == 6 and [s.kind for s in sub].count("b") == 3 and [s.kind for s in sub].count("c") == 1
    assert sub == stratified_subset(samples, 10, seed=3)
    assert [int(s.id) for s in sub] == sorted(int(s.id) for s in sub)  # original order
    assert {s.id for s in sub} != {s.id for s in stratified_subset(samples, 10, seed=4)}
    assert stratified_subset(samples, 500, seed=0) == samples and stratified_subset(samples, 0) == []
    # largest remainder: 1.5 / 1.5 -> 1 + 1, the spare one to the kind sorting first
    two = stratified_subset(make({"b": 5, "a": 5}), 3, seed=0)
    assert sorted(s.kind for s in two) == ["a", "a", "b"]


def test_stratified_subset_keeps_mmbench_groups(tmp_path):
    write_mmbench(tmp_path)
    samples = list(task("mmbench_en_dev", tmp_path).load())
    for seed in range(5):
        sub = stratified_subset(samples, 1, seed=seed)
        groups = {s.meta["group"] for s in sub}
        assert len(groups) == 1
        assert len(sub) == sum(s.meta["group"] in groups for s in samples)  # every rotation of it
