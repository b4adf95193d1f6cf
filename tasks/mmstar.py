"""``mmstar``: MMStar (1,500 vision-indispensable multiple-choice questions, 6 categories × 3 sub-categories).

Data (``--task mmstar`` or ``--task mmstar:PATH``): the Hugging Face dataset
``Lin-Chen/MMStar`` (config and split ``val``; one file, ``mmstar.parquet``, at the
repository root), columns ``index, question, image, answer, category, l2_category,
meta_info``; no path reads the ``datasets`` cache, ``PATH`` a snapshot (``PATH/mmstar.parquet``
as ``hf download Lin-Chen/MMStar --repo-type dataset --local-dir PATH`` leaves it, or
``PATH/**/val-*.parquet``) or a ``save_to_disk`` folder. Images are decoded lazily, one per
sample. The options are part of ``question`` (``... Options: A: ..., B: ..., C: ..., D: ...``).

Followed: lmms-eval v0.7.2 (commit cb45ac4d), ``lmms_eval/tasks/mmstar/mmstar.yaml``,
``_default_template_yaml``, ``utils.py`` and ``lmms_eval/tasks/_task_utils/mcq_extract.py``.

Prompt (``mmstar_doc_to_text``, default kwargs): the stripped question with ``" Please answer
yes or no."`` removed, ``+ "\\nAnswer with the option's letter from the given choices
directly"`` (no final period, as published). Generation: the yaml sets no
``generation_kwargs``, so lmms-eval's default ``until`` ``["\\n\\n"]`` (the prediction is cut
there, then stripped). Deviation: ``max_new_tokens`` is 16 here; lmms-eval leaves it to the
model wrapper (1024 for ``llava``/``llava_hf``), which changes nothing for a model that
answers with a letter.

Metric (binary; ``mmstar_process_results``): the letter ``extract_mcq_answer`` reads among
A–D (:func:`~tokenbench.tasks.official_metrics.mcq_letter`) equals ``answer``. ``kind`` is
``category``.

Aggregate, in percent (lmms-eval's numbers ×100; ``mmstar_aggregate_results``): per
category (``coarse perception``, ``fine-grained perception``, ``instance reasoning``,
``logical reasoning``, ``science & technology``, ``math``) the mean of its sub-categories'
accuracies; ``average`` the mean over every sub-category's accuracy (all 18 on the full
set); and, as a tokenbench extra, ``l2/{l2_category}`` for each sub-category.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.task import Sample, Task
from tokenbench.tasks.files import data_error
from tokenbench.tasks.hf import hf_rows
from tokenbench.tasks.official_metrics import lmms_eval_prediction, mcq_letter

HF_ID, HF_SPLIT = "Lin-Chen/MMStar", "val"
#: the stem of the snapshot's single file (``mmstar.parquet``), read as split ``val``
SNAPSHOT_FILE = "mmstar"
HF_SCHEMA = ("index", "question", "image", "answer", "category", "l2_category")
LAYOUT = "Lin-Chen/MMStar as parquet: DIR/mmstar.parquet (index, question, image, answer, category, l2_category, meta_info), or a save_to_disk folder"
YES_NO = " Please answer yes or no."
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"
LETTERS = "ABCD"


class MmStarTask(Task):
    name = "mmstar"
    description = "MMStar val, multiple choice; letter accuracy averaged over sub-categories."
    metric_kind = "binary"
    metric_name = "option-letter accuracy"
    max_new_tokens = 16
    stop_strings = ("\n\n",)
    needs_path = False

    def load(self) -> Sequence[Sample]:
        root = Path(str(self.path)) if self.path else None
        rows = hf_rows(HF_ID, root, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, file_stems=(SNAPSHOT_FILE,), task=self.name)
        samples = []
        for i, row in enumerate(rows):
            answer = str(row["answer"]).strip().upper()
            if answer not in LETTERS:
                raise data_error(f"{rows.where} row {i}", f"answer {row['answer']!r} is not one of {', '.join(LETTERS)}", LAYOUT)
            meta: dict[str, Any] = {"l2_category": str(row["l2_category"])}
            question = str(row["question"])
            samples.append(Sample(id=str(row["index"]), image=rows.image(i), question=question, answers=(answer,), kind=str(row["category"]), meta=meta))
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return f"{sample.question.strip().replace(YES_NO, '')}{POST_PROMPT}"

    def score(self, sample: Sample, prediction: str) -> float:
        return float(mcq_letter(lmms_eval_prediction(prediction, self.stop_strings), LETTERS) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        by_l2: dict[str, list[float]] = {}
        l2_of_category: dict[str, set[str]] = {}
        for s, x in zip(samples, scores):
            l2 = str(s.meta["l2_category"])
            by_l2.setdefault(l2, []).append(x)
            l2_of_category.setdefault(str(s.kind), set()).add(l2)
        l2_mean = {l2: sum(xs) / len(xs) for l2, xs in by_l2.items()}
        out: dict[str, float] = {}
        for category in sorted(l2_of_category):
            means = [l2_mean[l2] for l2 in l2_of_category[category]]
            out[category] = 100.0 * sum(means) / len(means)
        out["average"] = 100.0 * sum(l2_mean.values()) / max(len(l2_mean), 1)
        for l2 in sorted(l2_mean):
            out[f"l2/{l2}"] = 100.0 * l2_mean[l2]
        return out
