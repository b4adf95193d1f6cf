"""``scienceqa_img``: ScienceQA test split, the 2,017 questions that come with an image.

Data (``--task scienceqa_img:PATH``): the official ScienceQA release (``data/scienceqa``):
``problems.json`` (dict id → ``{"question", "choices", "answer" (index), "hint",
"image" ("image.png" or null), "split", "subject", ...}``), optionally
``pid_splits.json`` (``{"test": [ids], ...}``; when present it defines the test split,
else each problem's ``split`` does), and the images at ``images/test/{id}/image.png``
or ``test/{id}/image.png`` under ``PATH`` (option ``images=DIR``: the folder holding
``{id}/image.png``). Only test problems with an image are kept. ``kind`` is the subject
(natural / social / language science).

Prompt (LLaVA-1.5's ``llava_test_CQM-A`` with ``--single-pred-prompt``; every family,
the adapter applies the chat template)::

    Context: {hint}        (line omitted when the hint is empty)
    {question}
    A. {choice 0}
    B. {choice 1}
    Answer with the option's letter from the given choices directly.

Metric: option-letter accuracy. The letter is read by
:func:`tokenbench.answers.option_letter` (``"B"``, ``"B."``, ``"(B)"``, ``"B. text"``,
or the exact option text). An unreadable answer is wrong,
where LLaVA's script picks a random option; the difference is negligible for models
that follow the prompt (LLaVA-1.5-7B: 69.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenbench.answers import option_letter
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import accuracy_by_kind, check_images, choice_prompt, data_error, first_file, need_keys, read_json

LETTERS = "ABCDEFGHIJ"
LAYOUT = (
    "DIR/problems.json (dict id -> {question, choices, answer, hint, image, split, subject}) "
    "[+ DIR/pid_splits.json] + DIR/images/test/{id}/image.png or DIR/test/{id}/image.png (or option images=DIR)"
)


class ScienceQaImgTask(Task):
    name = "scienceqa_img"
    description = "ScienceQA test split, questions with an image; option-letter accuracy."
    metric_kind = "binary"
    metric_name = "option accuracy"
    max_new_tokens = 8
    needs_path = True
    defaults = {"images": None}

    def load(self) -> Sequence[Sample]:
        root = Path(str(self.path))
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

    def prompt(self, sample: Sample, family: str) -> str:
        hint = sample.meta.get("hint", "")
        return choice_prompt(sample.question, sample.choices or (), f"Context: {hint}" if hint else "")

    def score(self, sample: Sample, prediction: str) -> float:
        return float(option_letter(prediction, sample.choices or ()) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        return accuracy_by_kind(samples, scores)
