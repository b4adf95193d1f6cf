"""``mme``: the MME benchmark, 10 perception and 4 cognition subtasks of yes/no questions.

Data (``--task mme`` or ``--task mme:PATH``):

* no path: the Hugging Face dataset ``lmms-lab/MME`` (split ``test``, 2,374 rows,
  columns ``question_id, image, question, answer, category``; ``question_id`` names the
  image, e.g. ``code_reasoning/0020.png``, shared by its two questions) from the
  ``datasets`` cache;
* ``PATH`` a local copy of it (``PATH/data/test-*.parquet`` as ``hf download
  lmms-lab/MME --repo-type dataset --local-dir PATH`` leaves it, or ``save_to_disk``);
  images are decoded lazily, one per sample;
* ``PATH`` the official release folder ``MME_Benchmark_release_version`` (``PATH``
  itself or its parent), one folder per subtask, in either layout of the release:
  ``SUBTASK/images/NAME.jpg|png`` + ``SUBTASK/questions_answers_YN/NAME.txt``
  (artwork, celebrity, landmark, posters, scene), or flat ``SUBTASK/NAME.jpg|png`` +
  ``SUBTASK/NAME.txt`` (the others); each ``.txt`` holds lines ``question<TAB>Yes|No``,
  two questions per image. Subtasks whose folder is absent are skipped (at least one
  must be present); ``aggregate`` then sums only what was loaded, so compare totals only
  on the full release.

Prompt (every family, both protocols; lmms-eval's ``mme_doc_to_text`` with the default
kwargs, as LLaVA-1.5's evaluation): the stripped question with every
``" Please answer yes or no."`` removed, + ``"\\nAnswer the question using a single
word or phrase."``; the adapter applies the chat template.

Score (``lmms_eval/tasks/mme/utils.py`` of lmms-eval v0.7.2, commit cb45ac4d, which is
the official ``calculation.py``): per subtask, the mean over images of accuracy×100 +
accuracy+×100 (accuracy+: both questions of the image right). A prediction is read,
``protocol=lmms_eval`` (default), by
:func:`tokenbench.tasks.lmms_answers.mme_answer` (periods removed, a lone ``y``/``n``
counts), ``protocol=llava`` by :func:`tokenbench.answers.mme_yes_no`; anything but
yes/no is wrong. ``aggregate`` reports each subtask's ``acc``, ``acc_plus`` and
``score``, and ``perception`` (lmms-eval's ``mme_perception_score``, max 2000;
LLaVA-1.5-7B: 1510.7), ``cognition`` (``mme_cognition_score``, max 800) and ``total``.
The two questions on one image share ``meta["group"]``, so a stratified ``--limit``
keeps them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import mme_yes_no
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import data_error, need_dir
from tokenbench.tasks.hf import hf_rows, is_hf_folder
from tokenbench.tasks.lmms_answers import check_protocol, mme_answer

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXT = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
SUFFIX = "\nAnswer the question using a single word or phrase."
ORIGINAL_SUFFIX = " Please answer yes or no."
LAYOUT = (
    "DIR/SUBTASK/ for SUBTASK in existence, count, ..., code_reasoning, each either SUBTASK/images/NAME.jpg|png + "
    "SUBTASK/questions_answers_YN/NAME.txt or flat SUBTASK/NAME.jpg|png + SUBTASK/NAME.txt; "
    "each .txt has lines 'question<TAB>Yes|No'; "
    "or lmms-lab/MME as parquet (DIR/data/test-*.parquet with columns question_id, image, question, answer, category) or saved with save_to_disk"
)
HF_ID = "lmms-lab/MME"
HF_SCHEMA = ("question_id", "image", "question", "answer", "category")


class MmeTask(Task):
    name = "mme"
    description = "MME perception + cognition yes/no; official score = acc + acc+ per subtask."
    metric_kind = "binary"
    metric_name = "accuracy (yes/no)"
    max_new_tokens = 16
    defaults = {"protocol": "lmms_eval"}
    #: the two questions on one image are one cluster for the paired statistics
    cluster_key = "group"

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        self.options["protocol"] = check_protocol(self.options["protocol"])

    def load(self) -> Sequence[Sample]:
        if not self.path:
            return self._load_hf(None)
        root = need_dir(self.path, LAYOUT)
        if is_hf_folder(root, "test"):
            return self._load_hf(root)
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

    def _load_hf(self, root: Path | None) -> list[Sample]:
        rows = hf_rows(HF_ID, root, split="test", schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        known = PERCEPTION + COGNITION
        samples: list[Sample] = []
        seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            subtask, answer = str(row["category"]), str(row["answer"]).strip().lower().replace(".", "")
            if subtask not in known:
                raise data_error(f"{rows.where} row {i}", f"category {subtask!r} is not an MME subtask ({', '.join(known)})", LAYOUT)
            if answer not in ("yes", "no"):
                raise data_error(f"{rows.where} row {i}", f"answer {row['answer']!r} is not Yes or No", LAYOUT)
            group = f"{subtask}/{row['question_id']}" if not str(row["question_id"]).startswith(f"{subtask}/") else str(row["question_id"])
            n = seen[group] = seen.get(group, -1) + 1
            samples.append(
                Sample(id=f"{group}/{n}", image=rows.image(i), question=str(row["question"]), answers=(answer,), kind=subtask, meta={"group": group})
            )
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question.strip().replace(ORIGINAL_SUFFIX, "") + SUFFIX

    def score(self, sample: Sample, prediction: str) -> float:
        read = mme_answer(prediction) if self.options["protocol"] == "lmms_eval" else mme_yes_no(prediction)
        return float(read == sample.answers[0])

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
