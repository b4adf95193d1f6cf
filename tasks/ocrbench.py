"""``ocrbench``: OCRBench (v1), 1,000 OCR questions in five categories, scored out of 1000.

Data (``--task ocrbench`` or ``--task ocrbench:PATH``): the Hugging Face dataset
``echo840/OCRBench`` (the copy lmms-eval's ``ocrbench.yaml`` reads: ``dataset_path:
echo840/OCRBench``, ``test_split: test``), split ``test``, columns ``dataset, question,
question_type, answer (list of strings), image``; no path reads the ``datasets`` cache,
``PATH`` a snapshot (``PATH/data/test-*.parquet`` as ``hf download echo840/OCRBench
--repo-type dataset --local-dir PATH`` leaves it) or a ``save_to_disk`` folder. Images are
decoded lazily, one per sample. (There is no ``lmms-lab/OCRBench`` in lmms-eval's task;
the definition reads the authors' own upload.)

Followed: lmms-eval v0.7.2 (commit cb45ac4d), ``lmms_eval/tasks/ocrbench/ocrbench.yaml``
and ``utils.py``.

Prompt (``ocrbench_doc_to_text``, default kwargs: empty pre- and post-prompt): the
question, stripped. Generation: ``max_new_tokens: 128``; no ``until`` in the yaml, so
lmms-eval's default ``["\\n\\n"]`` (the prediction is cut there, then stripped).

Metric (binary; ``ocrbench_process_results``): 1 if any answer is *contained* in the
prediction: for ``dataset == "HME100k"`` (handwritten mathematical expressions)
case-sensitively with all spaces and newlines removed from both, otherwise lower-cased
and stripped, newlines as spaces (:func:`~tokenbench.tasks.official_metrics.ocrbench_match`).
``kind`` is the question's category: ``Text Recognition`` for the six recognition types,
else ``question_type`` itself.

Aggregate (``ocrbench_aggregate_accuracy``), counts of right answers on the published
scale (the full set: 300 + 200 + 200 + 200 + 100 = 1000): ``final_score`` (of 1000),
``Text Recognition`` and each of the six recognition types, ``Scene Text-centric VQA``,
``Doc-oriented VQA``, ``Key Information Extraction``, ``Handwritten Mathematical
Expression Recognition``; and ``accuracy`` = 100 × right / questions (lmms-eval's
``ocrbench_accuracy`` = final / 1000, ×100, on the full set). Deviation: none in the
scoring; lmms-eval after v0.7.2 also folds full-width ASCII in non-HME answers, which is
not applied here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.task import Sample, Task
from tokenbench.tasks.files import data_error
from tokenbench.tasks.hf import hf_rows
from tokenbench.tasks.official_metrics import lmms_eval_prediction, ocrbench_match

HF_ID, HF_SPLIT = "echo840/OCRBench", "test"
HF_SCHEMA = ("dataset", "question", "question_type", "answer", "image")
LAYOUT = "echo840/OCRBench as parquet: DIR/data/test-*.parquet (dataset, question, question_type, answer[list], image), or a save_to_disk folder"
HME_SOURCE = "HME100k"
TEXT_RECOGNITION = "Text Recognition"
RECOGNITION_TYPES = (
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
)
CATEGORIES = (TEXT_RECOGNITION, "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction", "Handwritten Mathematical Expression Recognition")
QUESTION_TYPES = RECOGNITION_TYPES + CATEGORIES[1:]


class OcrBenchTask(Task):
    name = "ocrbench"
    description = "OCRBench v1 (1,000 OCR questions); contains-match, per-category counts, final score out of 1000."
    metric_kind = "binary"
    metric_name = "OCRBench contains-match"
    max_new_tokens = 128
    stop_strings = ("\n\n",)
    needs_path = False

    def load(self) -> Sequence[Sample]:
        rows = hf_rows(HF_ID, Path(str(self.path)) if self.path else None, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        samples = []
        for i, row in enumerate(rows):
            where = f"{rows.where} row {i}"
            qtype = str(row["question_type"])
            if qtype not in QUESTION_TYPES:
                raise data_error(where, f"question_type {qtype!r} is not an OCRBench type ({', '.join(QUESTION_TYPES)})", LAYOUT)
            answers = _answers(row["answer"], where)
            meta: dict[str, Any] = {"question_type": qtype, "source": str(row["dataset"])}
            kind = TEXT_RECOGNITION if qtype in RECOGNITION_TYPES else qtype
            samples.append(Sample(id=str(i), image=rows.image(i), question=str(row["question"]), answers=answers, kind=kind, meta=meta))
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question.strip()

    def score(self, sample: Sample, prediction: str) -> float:
        pred = lmms_eval_prediction(prediction, self.stop_strings)
        return float(ocrbench_match(pred, sample.answers, handwritten_math=sample.meta.get("source") == HME_SOURCE))

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        right = dict.fromkeys(QUESTION_TYPES, 0.0)
        for s, x in zip(samples, scores):
            right[str(s.meta["question_type"])] += x
        out = {qtype: right[qtype] for qtype in QUESTION_TYPES}
        out[TEXT_RECOGNITION] = sum(right[t] for t in RECOGNITION_TYPES)
        out["final_score"] = sum(right.values())
        out["accuracy"] = 100.0 * out["final_score"] / max(len(scores), 1)
        return out


def _answers(value: Any, where: str) -> tuple[str, ...]:
    """The accepted answers: the list as published (a single string is accepted as one answer, as lmms-eval does)."""
    answers = [value] if isinstance(value, str) else list(value or [])
    if not answers or not all(isinstance(a, str) for a in answers):
        raise data_error(where, f"'answer' must be a non-empty list of strings, got {value!r}", LAYOUT)
    return tuple(answers)
