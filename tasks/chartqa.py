"""``chartqa``: ChartQA test (2,500 questions on charts: 1,250 human-written, 1,250 augmented).

Data (``--task chartqa`` or ``--task chartqa:PATH``): the Hugging Face dataset
``lmms-lab/ChartQA``, split ``test``, columns ``type, question, answer, image`` (``type``
is ``human_test`` or ``augmented_test``); no path reads the ``datasets`` cache, ``PATH`` a
snapshot (``PATH/data/test-*.parquet`` as ``hf download lmms-lab/ChartQA --repo-type
dataset --local-dir PATH`` leaves it) or a ``save_to_disk`` folder. Images are decoded
lazily, one per sample.

Followed: lmms-eval v0.7.2 (commit cb45ac4d), ``lmms_eval/tasks/chartqa/chartqa.yaml`` and
``utils.py``.

Prompt (``chartqa_doc_to_text``, default kwargs): ``question + "\\nAnswer the question with
a single word."``. Generation: ``max_new_tokens: 16``; no ``until``, so lmms-eval's default
``["\\n\\n"]`` (the prediction is cut there, then stripped).

Metric (binary; ``chartqa_process_results`` / ``relaxed_correctness``): relaxed accuracy.
When both prediction and answer read as numbers (a trailing ``%`` divides by 100) and the
answer is not 0, right within 5 % relative error (``|p - a| / |a| <= 0.05``); otherwise
a case-insensitive exact match. ``kind`` is ``type``.

Aggregate, in percent (lmms-eval's numbers ×100): ``relaxed_overall`` (every question),
``relaxed_human_split`` (``type == "human_test"``) and ``relaxed_augmented_split`` (every
other type), each only when the loaded samples hold that split. Deviation: none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenbench.task import Sample, Task
from tokenbench.tasks.files import data_error
from tokenbench.tasks.hf import hf_rows
from tokenbench.tasks.official_metrics import lmms_eval_prediction, relaxed_correctness

HF_ID, HF_SPLIT = "lmms-lab/ChartQA", "test"
HF_SCHEMA = ("type", "question", "answer", "image")
LAYOUT = "lmms-lab/ChartQA as parquet: DIR/data/test-*.parquet (type, question, answer, image), or a save_to_disk folder"
POST_PROMPT = "\nAnswer the question with a single word."
HUMAN = "human_test"


class ChartQaTask(Task):
    name = "chartqa"
    description = "ChartQA test; relaxed accuracy (numbers within 5%), human and augmented splits."
    metric_kind = "binary"
    metric_name = "relaxed accuracy"
    max_new_tokens = 16
    stop_strings = ("\n\n",)
    needs_path = False

    def load(self) -> Sequence[Sample]:
        rows = hf_rows(HF_ID, Path(str(self.path)) if self.path else None, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        samples = []
        for i, row in enumerate(rows):
            if not isinstance(row["answer"], str):
                raise data_error(f"{rows.where} row {i}", f"'answer' must be a string, got {row['answer']!r}", LAYOUT)
            kind = str(row["type"])
            samples.append(Sample(id=str(i), image=rows.image(i), question=str(row["question"]), answers=(row["answer"],), kind=kind))
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return f"{sample.question}{POST_PROMPT}"

    def score(self, sample: Sample, prediction: str) -> float:
        return float(relaxed_correctness(lmms_eval_prediction(prediction, self.stop_strings), sample.answers[0]))

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        out = {"relaxed_overall": 100.0 * sum(scores) / max(len(scores), 1)}
        human = [x for s, x in zip(samples, scores) if s.kind == HUMAN]
        augmented = [x for s, x in zip(samples, scores) if s.kind != HUMAN]
        if human:
            out["relaxed_human_split"] = 100.0 * sum(human) / len(human)
        if augmented:
            out["relaxed_augmented_split"] = 100.0 * sum(augmented) / len(augmented)
        return out
