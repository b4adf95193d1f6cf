"""``mme``: the MME benchmark, 10 perception and 4 cognition subtasks of yes/no questions.

Data (``--task mme:PATH``): the official release folder ``MME_Benchmark_release_version``
(``PATH`` itself or its parent), one folder per subtask. Both layouts of the release
are read:

* ``SUBTASK/images/NAME.jpg|png`` + ``SUBTASK/questions_answers_YN/NAME.txt``
  (artwork, celebrity, landmark, posters, scene);
* flat ``SUBTASK/NAME.jpg|png`` + ``SUBTASK/NAME.txt`` (the others).

Each ``.txt`` holds lines ``question<TAB>Yes|No``, two questions per image. Subtasks
whose folder is absent are skipped (at least one must be present); ``aggregate`` then
sums only what was loaded, so compare totals only on the full release.

Score (official ``calculation.py``): per subtask, accuracy×100 + accuracy+×100, where
accuracy+ is the share of images with every question right; a prediction is read by
:func:`tokenbench.answers.mme_yes_no` (anything but a leading yes/no is wrong).
``aggregate`` reports each subtask's ``acc``, ``acc_plus`` and ``score``, and
separately ``perception`` (max 2000; LLaVA-1.5-7B: 1510.7), ``cognition`` (max 800) and
``total`` (max 2800; LLaVA-1.5-7B: ~1862), since papers quote either. The two questions
on one image share ``meta["group"]``, so a stratified ``--limit`` keeps them together.
Prompt (every family): the question with its trailing " Please answer yes or no."
replaced by ``"\\nAnswer the question using a single word or phrase."``, as LLaVA-1.5's
evaluation and lmms-eval do; the adapter applies the chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenbench.answers import mme_yes_no
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import data_error, need_dir

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXT = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
SUFFIX = "\nAnswer the question using a single word or phrase."
ORIGINAL_SUFFIX = " Please answer yes or no."
LAYOUT = (
    "DIR/SUBTASK/ for SUBTASK in existence, count, ..., code_reasoning, each either SUBTASK/images/NAME.jpg|png + "
    "SUBTASK/questions_answers_YN/NAME.txt or flat SUBTASK/NAME.jpg|png + SUBTASK/NAME.txt; "
    "each .txt has lines 'question<TAB>Yes|No'"
)


class MmeTask(Task):
    name = "mme"
    description = "MME perception + cognition yes/no; official score = acc + acc+ per subtask."
    metric_kind = "binary"
    metric_name = "accuracy (yes/no)"
    max_new_tokens = 16
    needs_path = True

    def load(self) -> Sequence[Sample]:
        root = need_dir(self.path, LAYOUT)
        if not any((root / t).is_dir() for t in PERCEPTION + COGNITION) and (root / "MME_Benchmark_release_version").is_dir():
            root = root / "MME_Benchmark_release_version"
        present = [t for t in PERCEPTION + COGNITION if (root / t).is_dir()]
        if not present:
            raise data_error(root, "no MME subtask folder found", LAYOUT)
        samples: list[Sample] = []
        for subtask in present:
            samples.extend(self._load_subtask(root / subtask, subtask))
        return samples

    def _load_subtask(self, folder: Path, subtask: str) -> list[Sample]:
        if (folder / "questions_answers_YN").is_dir():
            txt_dir, img_dir = folder / "questions_answers_YN", folder / "images"
        else:
            txt_dir = img_dir = folder
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix in IMAGE_EXT} if img_dir.is_dir() else {}
        txts = sorted(txt_dir.glob("*.txt"))
        if not txts:
            raise data_error(txt_dir, "no question .txt files", LAYOUT)
        samples = []
        for txt in txts:
            if txt.stem not in images:
                raise data_error(txt, f"no image {txt.stem}.jpg or .png in {img_dir}", LAYOUT)
            try:
                lines = txt.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise data_error(txt, f"cannot read ({exc})", LAYOUT) from None
            n = 0
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                question, tab, answer = line.rstrip("\r\n").rpartition("\t")
                answer = answer.strip().lower()
                if not tab or not question.strip() or answer not in ("yes", "no"):
                    raise data_error(f"{txt}:{lineno}", "expected 'question<TAB>Yes|No'", LAYOUT)
                group = f"{subtask}/{txt.stem}"
                samples.append(
                    Sample(id=f"{group}/{n}", image=str(images[txt.stem]), question=question.strip(), answers=(answer,), kind=subtask, meta={"group": group})
                )
                n += 1
            if not n:
                raise data_error(txt, "no questions", LAYOUT)
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        question = sample.question
        if question.endswith(ORIGINAL_SUFFIX.strip()):
            question = question[: -len(ORIGINAL_SUFFIX.strip())].rstrip()
        return question + SUFFIX

    def score(self, sample: Sample, prediction: str) -> float:
        return float(mme_yes_no(prediction) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        sums = {"perception": 0.0, "cognition": 0.0}
        for subtask in PERCEPTION + COGNITION:
            idx = [i for i, s in enumerate(samples) if s.kind == subtask]
            if not idx:
                continue
            groups: dict[str, bool] = {}
            for i in idx:
                g = str(samples[i].meta.get("group", samples[i].id))
                groups[g] = groups.get(g, True) and scores[i] >= 1.0
            acc = 100.0 * sum(scores[i] >= 1.0 for i in idx) / len(idx)
            acc_plus = 100.0 * sum(groups.values()) / len(groups)
            out[f"{subtask}/acc"], out[f"{subtask}/acc_plus"], out[f"{subtask}/score"] = acc, acc_plus, acc + acc_plus
            sums["perception" if subtask in PERCEPTION else "cognition"] += acc + acc_plus
        out.update(sums)
        out["total"] = sums["perception"] + sums["cognition"]
        return out
