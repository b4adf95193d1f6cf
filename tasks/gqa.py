"""``gqa``: GQA balanced test-dev (12,578 questions on 398 images).

Data (``--task gqa:PATH``): ``testdev_balanced_questions.json`` from the official GQA
release (``questions1.2.zip``), a dict ``question id → {"imageId", "question",
"answer", "types": {"structural", "semantic", "detailed"}, ...}``, in ``PATH``,
``PATH/questions`` or ``PATH/data`` (or ``PATH`` is the file itself), and the images
as ``{imageId}.jpg`` in ``PATH/images`` (option ``images=DIR`` to point elsewhere).

Metric: exact match after the official VQA answer processing
(:func:`tokenbench.answers.vqa_normalize`: case, punctuation, articles, number words)
on both sides. This agrees with LLaVA-1.5's pipeline (lower-case, strip a trailing
period, then the GQA ``eval.py`` exact match) on GQA's one- or two-word answers, and
forgives a few more surface variants. ``kind`` is ``types.structural`` (verify, query,
choose, logical, compare). Prompt (every family): the question + ``"\\nAnswer the
question using a single word or phrase."``, LLaVA-1.5's; the adapter applies the chat
template.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenbench.answers import vqa_normalize
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import accuracy_by_kind, check_images, data_error, first_file, need_keys, read_json

FILE = "testdev_balanced_questions.json"
SUFFIX = "\nAnswer the question using a single word or phrase."
LAYOUT = (
    f"DIR/{FILE} (dict question id -> {{imageId, question, answer, types}}; also DIR/questions/ or DIR/data/) "
    "+ DIR/images/{imageId}.jpg (or option images=DIR)"
)


class GqaTask(Task):
    name = "gqa"
    description = "GQA balanced test-dev, exact match after VQA normalisation."
    metric_kind = "binary"
    metric_name = "exact match (VQA-normalised)"
    max_new_tokens = 16
    needs_path = True
    defaults = {"images": None}

    def load(self) -> Sequence[Sample]:
        root = Path(str(self.path))
        if root.is_file():
            qfile, root = root, root.parent
        else:
            qfile = first_file([root / FILE, root / "questions" / FILE, root / "data" / FILE], LAYOUT)
        if self.options["images"]:
            images = Path(self.options["images"])
        else:
            candidates = (root / "images", root / "data" / "images", qfile.parent / "images")
            images = next((d for d in candidates if d.is_dir()), root / "images")
        data = read_json(qfile, LAYOUT)
        if not isinstance(data, dict) or not data:
            raise data_error(qfile, "expected a non-empty JSON object keyed by question id", LAYOUT)
        samples = []
        for qid, q in data.items():
            need_keys(q, ("imageId", "question", "answer"), f"{qfile} question {qid}", LAYOUT)
            types = q.get("types") or {}
            samples.append(
                Sample(
                    id=str(qid),
                    image=str(images / f"{q['imageId']}.jpg"),
                    question=str(q["question"]),
                    answers=(str(q["answer"]),),
                    kind=str(types.get("structural") or "unknown"),
                )
            )
        check_images((Path(s.image) for s in samples), LAYOUT)
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question + SUFFIX

    def score(self, sample: Sample, prediction: str) -> float:
        return float(vqa_normalize(prediction) == vqa_normalize(sample.answers[0]))

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        return accuracy_by_kind(samples, scores)
