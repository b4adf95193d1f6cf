"""``docvqa_val``: DocVQA validation (5,349 questions on 1,286 document images).

Data (``--task docvqa_val`` or ``--task docvqa_val:PATH``): the Hugging Face dataset
``lmms-lab/DocVQA``, config ``DocVQA``, split ``validation``, columns ``questionId,
question, question_types (list), image, docId, ucsf_document_id, ucsf_document_page_no,
answers (list), data_split``; no path reads the ``datasets`` cache, ``PATH`` a snapshot
(``PATH/DocVQA/validation-*.parquet`` as ``hf download lmms-lab/DocVQA --repo-type dataset
--local-dir PATH --include "DocVQA/validation-*"`` leaves it) or a ``save_to_disk`` folder.
Images are decoded lazily, one per sample.

Followed: lmms-eval v0.7.2 (commit cb45ac4d), ``lmms_eval/tasks/docvqa/docvqa_val.yaml``,
``_default_template_docvqa_yaml``, ``utils.py`` and the ``anls`` metric of
``lmms_eval/api/metrics.py``.

Prompt (``docvqa_doc_to_text``, default kwargs): ``question + "\\nAnswer the question using
a single word or phrase."``. Generation: ``max_new_tokens: 32``; no ``until``, so
lmms-eval's default ``["\\n\\n"]`` (the prediction is cut there, then stripped).

Metric (continuous; ``anls``): ANLS with threshold 0.5 — ``1 - min`` over the answers of
the Levenshtein distance between the lower-cased, whitespace-collapsed strings divided by
the longer raw length; below 0.5 it counts 0
(:func:`~tokenbench.tasks.official_metrics.anls`). ``kind`` is the question's types, joined
with ``", "`` (DocVQA labels a question with one or more types).

Aggregate, in percent (lmms-eval's number ×100): ``anls`` (the mean); also, as a tokenbench
extra, ``{type}/anls`` per question type, a question counting towards each of its types.
Deviation: none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.task import Sample, Task
from tokenbench.tasks.files import data_error
from tokenbench.tasks.hf import hf_rows
from tokenbench.tasks.official_metrics import anls, lmms_eval_prediction

HF_ID, HF_CONFIG, HF_SPLIT = "lmms-lab/DocVQA", "DocVQA", "validation"
HF_SCHEMA = ("questionId", "question", "question_types", "image", "answers")
LAYOUT = "lmms-lab/DocVQA as parquet: DIR/DocVQA/validation-*.parquet (questionId, question, question_types, image, answers, ...), or a save_to_disk folder"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
ANLS_THRESHOLD = 0.5


class DocVqaTask(Task):
    name = "docvqa_val"
    description = "DocVQA validation; ANLS (threshold 0.5)."
    metric_kind = "continuous"
    metric_name = "ANLS"
    max_new_tokens = 32
    stop_strings = ("\n\n",)
    needs_path = False

    def load(self) -> Sequence[Sample]:
        root = Path(str(self.path)) if self.path else None
        rows = hf_rows(HF_ID, root, config=HF_CONFIG, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        samples = []
        for i, row in enumerate(rows):
            where = f"{rows.where} row {i}"
            answers = _strings(row["answers"], "answers", where)
            if not answers:
                raise data_error(where, "'answers' is empty (the validation split has answers; the test split does not)", LAYOUT)
            types = _strings(row["question_types"] or [], "question_types", where)
            meta: dict[str, Any] = {"question_types": types}
            sample = Sample(id=str(row["questionId"]), image=rows.image(i), question=str(row["question"]), answers=answers, kind=", ".join(types), meta=meta)
            samples.append(sample)
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return f"{sample.question}{POST_PROMPT}"

    def score(self, sample: Sample, prediction: str) -> float:
        return anls(lmms_eval_prediction(prediction, self.stop_strings), sample.answers, ANLS_THRESHOLD)

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        out = {"anls": 100.0 * sum(scores) / max(len(scores), 1)}
        by_type: dict[str, list[float]] = {}
        for s, x in zip(samples, scores):
            for qtype in s.meta.get("question_types", ()):
                by_type.setdefault(str(qtype), []).append(x)
        for qtype in sorted(by_type):
            out[f"{qtype}/anls"] = 100.0 * sum(by_type[qtype]) / len(by_type[qtype])
        return out


def _strings(value: Any, column: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise data_error(where, f"{column!r} must be a list of strings, got {value!r}", LAYOUT)
    return tuple(value)
