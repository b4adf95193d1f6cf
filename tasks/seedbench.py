"""``seedbench``: SEED-Bench (v1) image questions (nine spatial dimensions, multiple choice A–D).

Data (``--task seedbench`` or ``--task seedbench:PATH``): the Hugging Face dataset
``lmms-lab/SEED-Bench``, split ``test``, columns ``answer, choice_a, choice_b, choice_c,
choice_d, data_id, data_type, question, question_id, question_type_id, image`` (a *list*
of images: one for an image question, frames for a video question); no path reads the
``datasets`` cache, ``PATH`` a snapshot (``PATH/data/test-*.parquet`` as ``hf download
lmms-lab/SEED-Bench --repo-type dataset --local-dir PATH`` leaves it) or a ``save_to_disk``
folder (:func:`tokenbench.tasks.hf.hf_rows`, the column read as a list of images). Only rows with ``data_type == "image"`` are
loaded (tokenbench measures single images); each sample's image is its row's first image,
decoded lazily.

Followed: lmms-eval v0.7.2 (commit cb45ac4d), ``lmms_eval/tasks/seedbench/seedbench.yaml``
and ``utils.py``.

Prompt (``seed_doc_to_text``)::

    {question}
    A. {choice_a}
    B. {choice_b}
    C. {choice_c}
    D. {choice_d}
    Answer with the option's letter from the given choices directly.

Generation: ``until: ["ASSISTANT:"]`` (the prediction is cut there, then stripped).
Deviation: ``max_new_tokens`` is 8 here; the yaml leaves it to the model wrapper (1024 for
``llava``/``llava_hf``), and only the first character is ever scored.

Metric (binary; ``seed_process_result`` + ``seed_aggregation_result``): the stripped
prediction's first character (:func:`~tokenbench.tasks.official_metrics.seed_letter`)
equals ``answer``, case-insensitively. ``kind`` is the question's dimension, named from
``question_type_id`` 1–9 as in SEED-Bench's ``SEED-Bench.json``.

Aggregate, in percent (lmms-eval's numbers ×100): ``seed_image`` and ``seed_all`` (equal
here, every loaded question being an image question); and, as a tokenbench extra,
``{dimension}/accuracy`` per question type (SEED-Bench's own per-dimension table).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.task import Sample, Task
from tokenbench.tasks.files import accuracy_by_kind, data_error
from tokenbench.tasks.hf import hf_rows
from tokenbench.tasks.official_metrics import lmms_eval_prediction, seed_letter

HF_ID, HF_SPLIT = "lmms-lab/SEED-Bench", "test"
HF_SCHEMA = ("answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_type", "question", "question_id", "question_type_id", "image")
LAYOUT = (
    "lmms-lab/SEED-Bench as parquet: DIR/data/test-*.parquet "
    "(answer, choice_a..choice_d, data_id, data_type, question, question_id, question_type_id, image[list]), or a save_to_disk folder"
)
CHOICE_COLUMNS = ("choice_a", "choice_b", "choice_c", "choice_d")
LETTERS = "ABCD"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
#: SEED-Bench's image dimensions by ``question_type_id`` (10-12 are the video ones)
DIMENSIONS = {
    1: "Scene Understanding",
    2: "Instance Identity",
    3: "Instance Attributes",
    4: "Instance Location",
    5: "Instances Counting",
    6: "Spatial Relation",
    7: "Instance Interaction",
    8: "Visual Reasoning",
    9: "Text Understanding",
}


class SeedBenchTask(Task):
    name = "seedbench"
    description = "SEED-Bench v1 image questions, A-D; accuracy, per dimension."
    metric_kind = "binary"
    metric_name = "option-letter accuracy"
    max_new_tokens = 8
    stop_strings = ("ASSISTANT:",)
    needs_path = False

    def load(self) -> Sequence[Sample]:
        root = Path(str(self.path)) if self.path else None
        rows = hf_rows(HF_ID, root, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, image_lists=("image",), task=self.name)
        samples = []
        for i, row in enumerate(rows):
            if row["data_type"] != "image":
                continue
            where = f"{rows.where} row {i}"
            answer = str(row["answer"]).strip().upper()
            if answer not in LETTERS:
                raise data_error(where, f"answer {row['answer']!r} is not one of {', '.join(LETTERS)}", LAYOUT)
            kind = _dimension(row["question_type_id"], where)
            choices = tuple(str(row[c]) for c in CHOICE_COLUMNS)
            meta: dict[str, Any] = {"question_type_id": int(row["question_type_id"])}
            samples.append(
                Sample(id=str(row["question_id"]), image=rows.image(i), question=str(row["question"]), answers=(answer,), choices=choices, kind=kind, meta=meta)
            )
        if not samples:
            raise data_error(rows.where, "no row with data_type 'image'", LAYOUT)
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, sample.choices or ()))
        return f"{sample.question}\n{options}{POST_PROMPT}"

    def score(self, sample: Sample, prediction: str) -> float:
        return float(seed_letter(lmms_eval_prediction(prediction, self.stop_strings)).lower() == sample.answers[0].lower())

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        by_kind = accuracy_by_kind(samples, scores)
        overall = by_kind.pop("accuracy")
        return {"seed_image": overall, "seed_all": overall, **by_kind}


def _dimension(value: Any, where: str) -> str:
    try:
        return DIMENSIONS[int(value)]
    except (KeyError, TypeError, ValueError):
        raise data_error(where, f"question_type_id {value!r} is not an image dimension (1-9)", LAYOUT) from None
