"""``scienceqa_img``: ScienceQA test split, the 2,017 questions that come with an image.

Data (``--task scienceqa_img`` or ``--task scienceqa_img:PATH``):

* no path: the Hugging Face dataset ``lmms-lab/ScienceQA``, config ``ScienceQA-IMG``,
  split ``test`` (columns ``image, question, choices, answer, hint, task, grade,
  subject, topic, category, skill, lecture, solution``) from the ``datasets`` cache;
  the sample id is the row number;
* ``PATH`` a local snapshot of it (``PATH/ScienceQA-IMG/test-*.parquet`` as ``hf
  download lmms-lab/ScienceQA --repo-type dataset --local-dir PATH`` leaves it);
  images are decoded lazily, one per sample;
* ``PATH`` the official ScienceQA release (``data/scienceqa``): ``problems.json`` (dict
  id → ``{"question", "choices", "answer" (index), "hint", "image" ("image.png" or
  null), "split", "subject", ...}``), optionally ``pid_splits.json`` (``{"test": [ids],
  ...}``; when present it defines the test split, else each problem's ``split`` does),
  and the images at ``images/test/{id}/image.png`` or ``test/{id}/image.png`` under
  ``PATH`` (option ``images=DIR``: the folder holding ``{id}/image.png``). Only test
  problems with an image are kept.

``kind`` is the subject (natural / social / language science).

Prompt (every family, both protocols; lmms-eval's ``sqa_doc_to_text`` with the default
format, the same text as LLaVA-1.5's ``--single-pred-prompt``; the adapter applies the
chat template)::

    Context: {hint}        (line omitted when the hint is empty)
    {question}
    A. {choice 0}
    B. {choice 1}
    Answer with the option's letter from the given choices directly.

Metric, ``protocol=lmms_eval`` (default; ``lmms_eval/tasks/scienceqa/utils.py`` of
lmms-eval v0.7.2, commit cb45ac4d): the stripped prediction is the letter (any case),
or starts ``"X."`` with X the upper-case letter
(:func:`tokenbench.tasks.lmms_answers.sqa_exact_match`); ``"(B)"`` or the option text is
wrong. ``protocol=llava``: the letter read by :func:`tokenbench.answers.option_letter`
(``"B"``, ``"B."``, ``"(B)"``, ``"B. text"``, or the exact option text; an unreadable
answer is wrong where LLaVA's script picks a random option). LLaVA-1.5-7B: 69.5 (lmms-eval
reports ``exact_match``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import option_letter
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import accuracy_by_kind, check_images, choice_prompt, data_error, first_file, need_keys, read_json
from tokenbench.tasks.hf import hf_rows, is_hf_folder
from tokenbench.tasks.lmms_answers import check_protocol, sqa_exact_match

LETTERS = "ABCDEFGHIJ"
LAYOUT = (
    "DIR/problems.json (dict id -> {question, choices, answer, hint, image, split, subject}) "
    "[+ DIR/pid_splits.json] + DIR/images/test/{id}/image.png or DIR/test/{id}/image.png (or option images=DIR), "
    "or lmms-lab/ScienceQA as parquet: DIR/ScienceQA-IMG/test-*.parquet (image, question, choices, answer, hint, subject, ...)"
)
HF_ID, HF_CONFIG = "lmms-lab/ScienceQA", "ScienceQA-IMG"
HF_SCHEMA = ("image", "question", "choices", "answer", "hint", "subject")


class ScienceQaImgTask(Task):
    name = "scienceqa_img"
    description = "ScienceQA test split, questions with an image; option-letter accuracy."
    metric_kind = "binary"
    metric_name = "option accuracy"
    max_new_tokens = 8
    defaults = {"images": None, "protocol": "lmms_eval"}

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        self.options["protocol"] = check_protocol(self.options["protocol"])

    def load(self) -> Sequence[Sample]:
        if not self.path:
            return self._load_hf(None)
        root = Path(str(self.path))
        if root.is_dir() and is_hf_folder(root, "test", HF_CONFIG) and not (root / "problems.json").is_file():
            return self._load_hf(root)
        pfile = first_file([root / "problems.json", root / "data" / "scienceqa" / "problems.json"], LAYOUT)
        problems = read_json(pfile, LAYOUT)
        if not isinstance(problems, dict) or not problems:
            raise data_error(pfile, "expected a non-empty JSON object keyed by problem id", LAYOUT)
        splits_file = pfile.parent / "pid_splits.json"
        if splits_file.is_file():
            splits = read_json(splits_file, LAYOUT)
            if not isinstance(splits, dict) or not isinstance(splits.get("test"), list):
                raise data_error(splits_file, "expected an object with a 'test' list of problem ids", LAYOUT)
            test_ids = [str(i) for i in splits["test"]]
        else:
            test_ids = [pid for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == "test"]
        if self.options["images"]:
            images = Path(self.options["images"])
        else:
            base = pfile.parent
            images = next((d for d in (base / "images" / "test", base / "test") if d.is_dir()), base / "images" / "test")
        samples = []
        for pid in test_ids:
            if pid not in problems:
                raise data_error(splits_file, f"test id {pid!r} is not in {pfile.name}", LAYOUT)
            p = problems[pid]
            need_keys(p, ("question", "choices", "answer"), f"{pfile} problem {pid}", LAYOUT)
            if not p.get("image"):
                continue
            choices = tuple(str(c) for c in p["choices"])
            if not isinstance(p["answer"], int) or not 0 <= p["answer"] < len(choices) <= len(LETTERS):
                raise data_error(f"{pfile} problem {pid}", f"answer {p['answer']!r} is not an index into choices", LAYOUT)
            samples.append(
                Sample(
                    id=str(pid),
                    image=str(images / pid / str(p["image"])),
                    question=str(p["question"]),
                    answers=(LETTERS[p["answer"]],),
                    choices=choices,
                    kind=str(p.get("subject") or "unknown"),
                    meta={"hint": str(p.get("hint") or "").strip()},
                )
            )
        if not samples:
            raise data_error(pfile, "no test problems with an image", LAYOUT)
        check_images((Path(s.image) for s in samples), LAYOUT)
        return samples

    def _load_hf(self, root: Path | None) -> list[Sample]:
        rows = hf_rows(HF_ID, root, config=HF_CONFIG, split="test", schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        samples = []
        for i, row in enumerate(rows):
            choices = tuple(str(c) for c in row["choices"] or ())
            answer = row["answer"]
            if not isinstance(answer, int) or not 0 <= answer < len(choices) <= len(LETTERS):
                raise data_error(f"{rows.where} row {i}", f"answer {answer!r} is not an index into choices", LAYOUT)
            samples.append(
                Sample(
                    id=str(i),
                    image=rows.image(i),
                    question=str(row["question"]),
                    answers=(LETTERS[answer],),
                    choices=choices,
                    kind=str(row["subject"] or "unknown"),
                    meta={"hint": str(row["hint"] or "")},
                )
            )
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        hint = sample.meta.get("hint", "")
        return choice_prompt(sample.question, sample.choices or (), f"Context: {hint}" if hint else "")

    def score(self, sample: Sample, prediction: str) -> float:
        if self.options["protocol"] == "lmms_eval":
            return sqa_exact_match(prediction, sample.answers[0])
        return float(option_letter(prediction, sample.choices or ()) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        return accuracy_by_kind(samples, scores)
