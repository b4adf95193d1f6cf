"""``textvqa_val``: TextVQA v0.5.1 validation (5,000 questions on 3,166 images).

Data (``--task textvqa_val`` or ``--task textvqa_val:PATH``):

* no path: the Hugging Face dataset ``lmms-lab/textvqa``, split ``validation``
  (columns ``image_id, question_id, question, question_tokens, image, image_width,
  image_height, flickr_original_url, flickr_300k_url, answers, image_classes,
  set_name, ocr_tokens``) from the ``datasets`` cache;
* ``PATH`` a local copy of it (``PATH/data/validation-*.parquet`` as ``hf download
  lmms-lab/textvqa --repo-type dataset --local-dir PATH`` leaves it); images are
  decoded lazily, one per sample;
* ``PATH`` the official release, ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id",
  "question", "image_id", "answers": [10 strings], "ocr_tokens"?, ...}]}``) in ``PATH``
  (or ``PATH`` is the file), the images as ``train_images/{image_id}.jpg`` (validation
  images ship in ``train_val_images.zip`` under ``train_images/``; option
  ``images=DIR`` to point elsewhere), and optionally
  ``TextVQA_Rosetta_OCR_v0.2_val.json`` (``{"data": [{"image_id", "ocr_tokens"}]}``),
  whose tokens are used where a question has no ``ocr_tokens`` of its own.

Prompt (every family; the adapter applies the chat template), ``protocol=lmms_eval``
(default; ``textvqa_doc_to_text`` of lmms-eval v0.7.2, commit cb45ac4d, default
kwargs): ``question.capitalize()`` (Python's: first letter upper, the rest lower) [+
``"\\nReference OCR token: a, b, c"`` with option ``ocr=true``] + ``"\\nAnswer the
question using a single word or phrase."``. ``protocol=llava``: the question as written.

Option ``ocr=true|false`` (default false, as lmms-eval's default): add the OCR line, as
LLaVA-1.5's reported TextVQA numbers do. The two settings differ by roughly 12 points for
LLaVA-1.5-7B (58.2 is *with* OCR tokens), so the option is part of the task's
``describe()`` and of every run key.

Metric (continuous; ``textvqa_process_results``, the same for both protocols): the
official VQA accuracy, ``min(1, matching humans / 3)`` averaged over the ten
leave-one-out subsets of the human answers, after the EvalAI answer processing
(:func:`tokenbench.answers.vqa_accuracy`, lmms-eval's ``EvalAIAnswerProcessor``): with
10 answers of which k match, k=1 → 0.3, 2 → 0.6, 3 → 0.9, ≥4 → 1. ``aggregate``'s
``accuracy`` is lmms-eval's ``exact_match`` in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import vqa_accuracy
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import as_bool, check_images, data_error, first_file, need_keys, read_json
from tokenbench.tasks.hf import hf_rows, is_hf_folder
from tokenbench.tasks.lmms_answers import check_protocol

FILE = "TextVQA_0.5.1_val.json"
OCR_FILE = "TextVQA_Rosetta_OCR_v0.2_val.json"
SUFFIX = "\nAnswer the question using a single word or phrase."
LAYOUT = (
    f"DIR/{FILE} ({{data: [{{question_id, question, image_id, answers[10]}}]}}) + DIR/train_images/{{image_id}}.jpg (or option images=DIR) [+ DIR/{OCR_FILE}], "
    "or lmms-lab/textvqa as parquet: DIR/data/validation-*.parquet (question_id, question, image_id, answers, image, ocr_tokens)"
)
HF_ID, HF_SPLIT = "lmms-lab/textvqa", "validation"
HF_SCHEMA = ("question_id", "question", "image_id", "answers", "image", "ocr_tokens")


class TextVqaTask(Task):
    name = "textvqa_val"
    description = "TextVQA v0.5.1 validation; official VQA accuracy (option ocr=true adds OCR tokens)."
    metric_kind = "continuous"
    metric_name = "VQA accuracy"
    max_new_tokens = 16
    defaults = {"ocr": False, "images": None, "protocol": "lmms_eval"}

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        self.options["ocr"] = as_bool(self.options["ocr"], "ocr")
        self.options["protocol"] = check_protocol(self.options["protocol"])

    def load(self) -> Sequence[Sample]:
        if not self.path:
            return self._load_hf(None)
        root = Path(str(self.path))
        if root.is_dir() and is_hf_folder(root, HF_SPLIT) and not (root / FILE).is_file():
            return self._load_hf(root)
        if root.is_file():
            qfile, root = root, root.parent
        else:
            qfile = first_file([root / FILE], LAYOUT)
        images = Path(self.options["images"]) if self.options["images"] else root / "train_images"
        doc = read_json(qfile, LAYOUT)
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list) or not doc["data"]:
            raise data_error(qfile, "expected an object with a non-empty 'data' list", LAYOUT)
        rosetta = self._rosetta(root / OCR_FILE)
        samples = []
        for i, q in enumerate(doc["data"]):
            where = f"{qfile} data[{i}]"
            need_keys(q, ("question_id", "question", "image_id", "answers"), where, LAYOUT)
            answers = q["answers"]
            if not isinstance(answers, list) or not answers:
                raise data_error(where, "'answers' must be a non-empty list of strings", LAYOUT)
            tokens = q.get("ocr_tokens") or rosetta.get(str(q["image_id"])) or []
            samples.append(
                Sample(
                    id=str(q["question_id"]),
                    image=str(images / f"{q['image_id']}.jpg"),
                    question=str(q["question"]),
                    answers=tuple(str(a) for a in answers),
                    kind="textvqa",
                    meta={"ocr_tokens": tuple(str(t) for t in tokens)},
                )
            )
        if self.options["ocr"] and not any(s.meta["ocr_tokens"] for s in samples):
            raise data_error(qfile, f"option ocr=true but no question has 'ocr_tokens' and {OCR_FILE} is absent", LAYOUT)
        check_images((Path(s.image) for s in samples), LAYOUT)
        return samples

    def _load_hf(self, root: Path | None) -> list[Sample]:
        rows = hf_rows(HF_ID, root, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        samples = []
        for i, row in enumerate(rows):
            answers = row["answers"]
            if not isinstance(answers, list) or not answers:
                raise data_error(f"{rows.where} row {i}", "'answers' must be a non-empty list of strings", LAYOUT)
            samples.append(
                Sample(
                    id=str(row["question_id"]),
                    image=rows.image(i),
                    question=str(row["question"]),
                    answers=tuple(str(a) for a in answers),
                    kind="textvqa",
                    meta={"ocr_tokens": tuple(str(t) for t in row["ocr_tokens"] or ())},
                )
            )
        return samples

    @staticmethod
    def _rosetta(path: Path) -> dict[str, list[str]]:
        if not path.is_file():
            return {}
        doc = read_json(path, LAYOUT)
        rows = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise data_error(path, "expected an object with a 'data' list of {image_id, ocr_tokens}", LAYOUT)
        return {str(r["image_id"]): list(r.get("ocr_tokens") or []) for r in rows if isinstance(r, dict) and "image_id" in r}

    def prompt(self, sample: Sample, family: str) -> str:
        text = sample.question.capitalize() if self.options["protocol"] == "lmms_eval" else sample.question
        tokens = sample.meta.get("ocr_tokens") or ()
        if self.options["ocr"] and tokens:
            text += "\nReference OCR token: " + ", ".join(tokens)
        return text + SUFFIX

    def score(self, sample: Sample, prediction: str) -> float:
        return vqa_accuracy(prediction, sample.answers)

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        return {"accuracy": 100.0 * sum(scores) / max(len(scores), 1)}
