"""OCRBench, ChartQA, DocVQA, MMStar and SEED-Bench in their Hugging Face form.

Each fixture is a tiny parquet file in the published schema of its dataset card, placed
where ``hf download ID --repo-type dataset --local-dir PATH`` puts it. Prompts are written
out by hand from lmms-eval v0.7.2's ``doc_to_text``; every expected score is worked out
by hand in the comments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hf_parquet import IMAGE, png, run, task
from hf_parquet import write_parquet as write

import tokenbench
from tokenbench.task import TaskDataError
from tokenbench.tasks.official_metrics import anls, mcq_letter, ocrbench_match, relaxed_correctness

FIVE = ("ocrbench", "chartqa", "docvqa_val", "mmstar", "seedbench")


# --- published schemas (dataset cards) --------------------------------------------------
OCRBENCH = pa.schema([("dataset", pa.string()), ("question", pa.string()), ("question_type", pa.string()), ("answer", pa.list_(pa.string())), ("image", IMAGE)])
CHARTQA = pa.schema([("type", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("image", IMAGE)])
DOCVQA = pa.schema(
    [
        ("questionId", pa.string()),
        ("question", pa.string()),
        ("question_types", pa.list_(pa.string())),
        ("image", IMAGE),
        ("docId", pa.int64()),
        ("ucsf_document_id", pa.string()),
        ("ucsf_document_page_no", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("data_split", pa.string()),
    ]
)
META_INFO = pa.struct([("source", pa.string()), ("split", pa.string()), ("image_path", pa.string())])
MMSTAR = pa.schema(
    [
        ("index", pa.int64()),
        ("question", pa.string()),
        ("image", IMAGE),
        ("answer", pa.string()),
        ("category", pa.string()),
        ("l2_category", pa.string()),
        ("meta_info", META_INFO),
    ]
)


# --- OCRBench ---------------------------------------------------------------------------
def ocrbench_rows() -> list[dict[str, Any]]:
    def row(source: str, question: str, qtype: str, answers: list[str]) -> dict[str, Any]:
        return {"dataset": source, "question": question, "question_type": qtype, "answer": answers, "image": png()}

    return [
        row("IIIT5K", " what is written in the image? ", "Regular Text Recognition", ["CHELSEA"]),
        row("SVT", "what is written in the image?", "Irregular Text Recognition", ["coffee"]),
        row("textVQA", "what brand is the bottle?", "Scene Text-centric VQA", ["coca cola", "coke"]),
        row("docVQA", "what is the date?", "Doc-oriented VQA", ["may 5"]),
        row("FUNSD", "what is the name?", "Key Information Extraction", ["John\nSmith"]),
        row(
            "HME100k",
            "Please write out the expression of the formula in the image using LaTeX format.",
            "Handwritten Mathematical Expression Recognition",
            ["x ^ { 2 }"],
        ),
    ]


def test_ocrbench_snapshot_prompt_scores_and_categories(tmp_path: Path) -> None:
    write(tmp_path / "data" / "test-00000-of-00001.parquet", ocrbench_rows(), OCRBENCH)
    t = task("ocrbench", tmp_path)
    preds = [
        "The text reads chelsea.",  # "chelsea" in "the text reads chelsea." (lower-cased) -> 1
        "cofee",  # "coffee" not in "cofee" -> 0
        "It is Coke\n\nbecause the label says so",  # cut at "\n\n" -> "it is coke" contains "coke" -> 1
        "May 15",  # "may 5" not in "may 15" -> 0
        "john smith",  # answer "John\nSmith" -> "john smith", contained -> 1
        "$x^{2}$",  # HME: "x^{2}" in "$x^{2}$" once spaces are gone -> 1
    ]
    samples, scores, agg = run(t, preds)
    # ocrbench_doc_to_text: pre_prompt "" + question.strip() + post_prompt ""
    assert t.prompt(samples[0], "llava") == "what is written in the image?"
    assert t.prompt(samples[5], "qwen2_vl") == "Please write out the expression of the formula in the image using LaTeX format."
    assert [s.kind for s in samples[:3]] == ["Text Recognition", "Text Recognition", "Scene Text-centric VQA"]
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert samples[0].load_image().size == (6, 4)
    # counts: recognition 1 (regular) + 0 (irregular) = 1; scene 1; doc 0; KIE 1; HME 1; final 4 of 6 -> 66.67 %
    assert agg["Text Recognition"] == 1 and agg["Regular Text Recognition"] == 1 and agg["Irregular Text Recognition"] == 0
    assert agg["Scene Text-centric VQA"] == 1 and agg["Doc-oriented VQA"] == 0 and agg["Key Information Extraction"] == 1
    assert agg["Handwritten Mathematical Expression Recognition"] == 1
    assert agg["final_score"] == 4 and agg["accuracy"] == pytest.approx(400 / 6)
    assert t.metric_kind == "binary" and t.max_new_tokens == 128 and t.stop_strings == ("\n\n",)


def test_ocrbench_hme_spacing_and_case() -> None:
    # HME: spaces and newlines vanish on both sides, case counts
    assert ocrbench_match("x^{2}", ["x ^ { 2 }"], handwritten_math=True)
    assert ocrbench_match("\\frac { a }\n{ b }", ["\\frac{a}{b}"], handwritten_math=True)
    assert not ocrbench_match("X^{2}", ["x ^ { 2 }"], handwritten_math=True)
    # other types: lower-cased, but spaces still matter ("x^{2}" is not in "x ^ { 2 }")
    assert not ocrbench_match("x ^ { 2 }", ["x^{2}"], handwritten_math=False)
    assert ocrbench_match("X ^ { 2 }", ["x ^ { 2 }"], handwritten_math=False)
    # containment, not equality; any of the answers
    assert ocrbench_match("the sign says STOP here", ["go", "stop"], handwritten_math=False)


# --- ChartQA ----------------------------------------------------------------------------
def test_chartqa_relaxed_accuracy_per_split(tmp_path: Path) -> None:
    rows = [
        {"type": "human_test", "question": "What is the highest value?", "answer": "100", "image": png()},
        {"type": "human_test", "question": "Which country is first?", "answer": "Japan", "image": png()},
        {"type": "augmented_test", "question": "What is the share of A?", "answer": "20%", "image": png()},
        {"type": "augmented_test", "question": "How many bars?", "answer": "0", "image": png()},
    ]
    write(tmp_path / "data" / "test-00000-of-00001.parquet", rows, CHARTQA)
    t = task("chartqa", tmp_path)
    # 104.9 vs 100: 4.9 % off -> 1; " japan " stripped, case-insensitive -> 1; "21%" = 0.21 vs 0.20: 5 % off -> 1;
    # target "0" is falsy -> string comparison "0.0" != "0" -> 0
    samples, scores, agg = run(t, ["104.9", " japan \n\nThe first bar", "21%", "0.0"])
    # chartqa_doc_to_text: "" + question + "\nAnswer the question with a single word."
    assert t.prompt(samples[0], "llava") == "What is the highest value?\nAnswer the question with a single word."
    assert scores == [1.0, 1.0, 1.0, 0.0]
    # overall 3/4; human 2/2; augmented 1/2
    assert agg == pytest.approx({"relaxed_overall": 75.0, "relaxed_human_split": 100.0, "relaxed_augmented_split": 50.0})
    assert samples[2].kind == "augmented_test" and t.max_new_tokens == 16


def test_chartqa_relaxed_correctness_edges() -> None:
    assert relaxed_correctness("104.9", "100")  # |104.9-100|/100 = 0.049 <= 0.05
    assert not relaxed_correctness("105.1", "100")  # 0.051 > 0.05
    assert relaxed_correctness("95", "100")  # exactly 5 % below counts
    assert relaxed_correctness("12%", "12%")  # 0.12 vs 0.12
    assert not relaxed_correctness("12", "12%")  # 12 vs 0.12: a bare number is not read as a percentage
    assert relaxed_correctness("0.12", "12%")  # 0.12 vs 0.12
    assert not relaxed_correctness("1,000", "1000")  # "1,000" is not a float -> string comparison
    assert relaxed_correctness("0", "0") and not relaxed_correctness("0.0", "0")  # zero target: exact string only
    assert relaxed_correctness("YES", "Yes")


# --- DocVQA -----------------------------------------------------------------------------
def docvqa_row(qid: str, question: str, types: list[str], answers: list[str]) -> dict[str, Any]:
    return {
        "questionId": qid,
        "question": question,
        "question_types": types,
        "image": png("white"),
        "docId": 14465,
        "ucsf_document_id": "pybv0228",
        "ucsf_document_page_no": "81",
        "answers": answers,
        "data_split": "val",
    }


def test_docvqa_anls_scores_and_aggregate(tmp_path: Path) -> None:
    rows = [
        docvqa_row("49153", "What is the name of the animal?", ["layout"], ["the cat"]),
        docvqa_row("49154", "What is the total?", ["table/list", "layout"], ["$ 1,000", "1000"]),
        docvqa_row("49155", "Who signed the letter?", ["handwritten"], ["Dr. Smith"]),
    ]
    write(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet", rows, DOCVQA)
    write(tmp_path / "DocVQA" / "test-00000-of-00001.parquet", [docvqa_row("9", "test question", [], [])], DOCVQA)
    t = task("docvqa_val", tmp_path)
    samples, scores, agg = run(t, ["the cats", "1000", "Mr. Jones"])
    assert [s.id for s in samples] == ["49153", "49154", "49155"]  # the test split is not read
    # docvqa_doc_to_text: "" + question + "\nAnswer the question using a single word or phrase."
    assert t.prompt(samples[0], "llava") == "What is the name of the animal?\nAnswer the question using a single word or phrase."
    # "the cat" vs "the cats": 1 edit over max(7, 8) = 8 -> 1 - 1/8 = 0.875
    # "1000" equals the second answer -> 1
    # "dr. smith" vs "mr. jones": d->m, s->j, m->o, i->n, t->e, h->s = 6 edits over 9 -> 1 - 6/9 = 0.33 < 0.5 -> 0
    assert scores == pytest.approx([0.875, 1.0, 0.0])
    # anls = 100 * (0.875 + 1 + 0) / 3 = 62.5; layout: (0.875 + 1) / 2 = 93.75; table/list: 100; handwritten: 0
    assert agg == pytest.approx({"anls": 62.5, "layout/anls": 93.75, "table/list/anls": 100.0, "handwritten/anls": 0.0})
    assert samples[1].kind == "table/list, layout"
    assert t.metric_kind == "continuous" and t.max_new_tokens == 32


def test_anls_edge_cases() -> None:
    # at the threshold: "abcd" vs "abxy" is 2 edits over 4 -> 0.5, kept; "abc" vs "axy": 2/3 -> 0.33 -> 0
    assert anls("abcd", ["abxy"]) == pytest.approx(0.5)
    assert anls("abc", ["axy"]) == 0.0
    # lower-cased and whitespace-collapsed before the distance: "The  Cat" -> "the cat" equals "the cat"
    assert anls("The  Cat", ["the cat"]) == 1.0
    # the normaliser is the raw length: "a  b" (4 chars) vs "a c" (3): "a b" vs "a c" is 1 edit over 4 -> 0.75
    assert anls("a  b", ["a c"]) == pytest.approx(0.75)
    # the best answer counts: min NL over the answers
    assert anls("paris", ["london", "paris"]) == 1.0
    assert anls("", ["x"]) == 0.0 and anls("anything", []) == 0.0


# --- MMStar -----------------------------------------------------------------------------
def mmstar_row(index: int, question: str, answer: str, category: str, l2: str) -> dict[str, Any]:
    meta = {"source": "MMBench", "split": "val", "image_path": f"images/{index}.jpg"}
    return {"index": index, "question": question, "image": png(), "answer": answer, "category": category, "l2_category": l2, "meta_info": meta}


def test_mmstar_prompt_letters_and_sub_category_averages(tmp_path: Path) -> None:
    q0 = "Which option describes the image best?\nOptions: A: a cat, B: a dog, C: a cow, D: a hen"
    q3 = "Is the man smiling? Please answer yes or no.\nOptions: A: yes, B: no"
    rows = [
        mmstar_row(0, q0, "A", "coarse perception", "image scene and topic"),
        mmstar_row(1, "How many apples?\nOptions: A: 1, B: 2, C: 3, D: 4", "C", "coarse perception", "image scene and topic"),
        mmstar_row(2, "What style is it?\nOptions: A: oil, B: sketch, C: photo, D: cartoon", "B", "coarse perception", "image style & quality"),
        mmstar_row(3, q3, "B", "math", "geometry"),
    ]
    write(tmp_path / "mmstar.parquet", rows, MMSTAR)
    t = task("mmstar", tmp_path)
    # "A" -> start format A (right); "The answer is (C)." -> C (right); "I think A: no, B. is right" -> "start" rule fails
    # ("I" is no choice), period "B." (rank 5) beats colon "A:" (rank 4) -> B (right); "D" -> D (wrong, answer B)
    samples, scores, agg = run(t, ["A", "The answer is (C).", "I think A: no, B. is right", "D"])
    # mmstar_doc_to_text: question.strip(), " Please answer yes or no." removed, + post_prompt (no final period)
    assert t.prompt(samples[0], "llava") == q0 + "\nAnswer with the option's letter from the given choices directly"
    assert t.prompt(samples[3], "llava") == "Is the man smiling?\nOptions: A: yes, B: no\nAnswer with the option's letter from the given choices directly"
    assert scores == [1.0, 1.0, 1.0, 0.0]
    # l2: scene & topic 2/2 = 1, style & quality 1/1 = 1, geometry 0/1 = 0
    # coarse perception = mean(1, 1) = 100; math = 0; average = mean over the 3 sub-categories = 2/3
    assert agg["coarse perception"] == pytest.approx(100.0) and agg["math"] == pytest.approx(0.0)
    assert agg["average"] == pytest.approx(200 / 3)
    assert agg["l2/geometry"] == 0.0 and agg["l2/image scene and topic"] == 100.0
    assert samples[0].id == "0" and samples[0].kind == "coarse perception"


def test_mcq_letter_follows_extract_mcq_answer() -> None:
    assert mcq_letter("B") == "B"
    assert mcq_letter("(D) a hen") == "D"  # start: "(" is not a letter, so "D" at position 1 is not "start"; parentheses wins
    assert mcq_letter("The correct answer is B") == "B"  # ends with a standalone B
    assert mcq_letter("Answer: C.") == "C"  # trailing "." stripped first -> ends with C
    assert mcq_letter("I cannot tell") == ""  # "I" is not among A-D; no letter A-D at all
    assert mcq_letter("Cat") == "C"  # no format matches -> fallback: any occurrence of a letter


# --- SEED-Bench -------------------------------------------------------------------------
def seed_row(qid: str, data_type: str, type_id: int, answer: str, frames: int = 1) -> dict[str, Any]:
    return {
        "answer": answer,
        "choice_a": "a red car",
        "choice_b": "a blue car",
        "choice_c": "a bus",
        "choice_d": "a bike",
        "data_id": f"{qid}.jpg",
        "data_type": data_type,
        "question": "What is in the picture?",
        "question_id": qid,
        "question_type_id": type_id,
        "image": [png("blue" if i else "red") for i in range(frames)],
    }


def write_seed(root: Path, rows: list[dict[str, Any]]) -> None:
    """As the hub stores it: parquet written by ``datasets`` with ``image`` declared as a sequence of images."""
    import datasets

    features = datasets.Features(
        {
            "answer": datasets.Value("string"),
            **{c: datasets.Value("string") for c in ("choice_a", "choice_b", "choice_c", "choice_d")},
            "data_id": datasets.Value("string"),
            "data_type": datasets.Value("string"),
            "question": datasets.Value("string"),
            "question_id": datasets.Value("string"),
            "question_type_id": datasets.Value("int16"),
            "image": datasets.List(datasets.Image()),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))


def test_seedbench_image_questions_prompt_and_dimensions(tmp_path: Path) -> None:
    rows = [seed_row("101", "image", 1, "A"), seed_row("v1", "video", 10, "B", frames=3), seed_row("102", "image", 1, "B"), seed_row("103", "image", 9, "C")]
    write_seed(tmp_path, rows)
    t = task("seedbench", tmp_path)
    # first character only: "A" right; "b. a blue car" -> "b" == "B" case-insensitively, right; "The answer is C" -> "T", wrong
    samples, scores, agg = run(t, ["A", "b. a blue car", "The answer is C"])
    assert [s.id for s in samples] == ["101", "102", "103"]  # the video question is not loaded
    # seed_doc_to_text
    expected = "What is in the picture?\nA. a red car\nB. a blue car\nC. a bus\nD. a bike\nAnswer with the option's letter from the given choices directly."
    assert t.prompt(samples[0], "llava") == expected
    assert scores == [1.0, 1.0, 0.0]
    # seed_image = seed_all = 2/3; Scene Understanding 2/2; Text Understanding 0/1
    assert agg == pytest.approx({"seed_image": 200 / 3, "seed_all": 200 / 3, "Scene Understanding/accuracy": 100.0, "Text Understanding/accuracy": 0.0})
    assert samples[0].load_image().getpixel((0, 0)) == (255, 0, 0)  # the row's first image, decoded only now
    assert t.stop_strings == ("ASSISTANT:",) and t.score(samples[2], "C\nASSISTANT: A") == 1.0


def test_seedbench_row_without_images_fails_only_when_its_image_is_read(tmp_path: Path) -> None:
    write_seed(tmp_path, [seed_row("101", "image", 1, "A"), seed_row("102", "image", 1, "B", frames=0)])
    samples = list(task("seedbench", tmp_path).load())  # loading reads no image
    assert samples[0].load_image().size == (6, 4)
    with pytest.raises(TaskDataError, match=r"row 1: column 'image' holds 0 image\(s\), no image 0"):
        samples[1].load_image()


# --- registry and errors ----------------------------------------------------------------
def test_registry_lists_the_five() -> None:
    names = set(tokenbench.get_registry().names("tasks"))
    assert set(FIVE) <= names
    for name in FIVE:
        cls = tokenbench.get_registry().load("tasks", name)
        assert cls.name == name and not cls.needs_path and cls.metric_kind == ("continuous" if name == "docvqa_val" else "binary")


@pytest.mark.parametrize(
    ("name", "drop"),
    [("ocrbench", "question_type"), ("chartqa", "type"), ("docvqa_val", "answers"), ("mmstar", "l2_category"), ("seedbench", "question_type_id")],
)
def test_missing_column_is_a_one_line_error(tmp_path: Path, name: str, drop: str) -> None:
    if name == "ocrbench":
        write(tmp_path / "data" / "test-00000-of-00001.parquet", ocrbench_rows(), OCRBENCH)
    elif name == "chartqa":
        write(tmp_path / "data" / "test-00000-of-00001.parquet", [{"type": "human_test", "question": "q", "answer": "1", "image": png()}], CHARTQA)
    elif name == "docvqa_val":
        write(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet", [docvqa_row("1", "q", [], ["a"])], DOCVQA)
    elif name == "mmstar":
        write(tmp_path / "mmstar.parquet", [mmstar_row(0, "q", "A", "math", "geometry")], MMSTAR)
    else:
        write_seed(tmp_path, [seed_row("1", "image", 1, "A")])
    files = list(tmp_path.glob("**/*.parquet"))
    table = pq.read_table(files[0])
    pq.write_table(table.drop_columns([drop]), files[0])
    with pytest.raises(TaskDataError) as excinfo:
        task(name, tmp_path).load()
    message = str(excinfo.value)
    assert "\n" not in message and f"missing column {drop!r}" in message and str(tmp_path) in message
