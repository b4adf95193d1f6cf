"""``gqa``: GQA balanced test-dev (12,578 questions on 398 images).

Data (``--task gqa`` or ``--task gqa:PATH``):

* no path: the Hugging Face dataset ``lmms-lab/GQA`` from the ``datasets`` cache, as
  lmms-eval reads it: questions from config ``testdev_balanced_instructions`` (split
  ``testdev``; columns ``id, imageId, question, answer, fullAnswer, types, ...``) and
  images from config ``testdev_balanced_images`` (split ``testdev``; columns ``id,
  image``), joined on ``imageId``;
* ``PATH`` a local snapshot of it (``hf download lmms-lab/GQA --repo-type dataset
  --local-dir PATH``; only ``PATH/testdev_balanced_{instructions,images}/testdev-*.parquet``
  are read); images are decoded lazily, one per sample;
* ``PATH`` the official release: ``testdev_balanced_questions.json`` (``questions1.2.zip``),
  a dict ``question id → {"imageId", "question", "answer", "types": {"structural",
  "semantic", "detailed"}, ...}``, in ``PATH``, ``PATH/questions`` or ``PATH/data`` (or
  ``PATH`` is the file itself), and the images as ``{imageId}.jpg`` in ``PATH/images``
  (option ``images=DIR`` to point elsewhere).

Prompt (every family, both protocols; lmms-eval's ``gqa_doc_to_text`` with the default
kwargs, which is also LLaVA-1.5's): the question + ``"\\nAnswer the question using a
single word or phrase."``; the adapter applies the chat template.

Metric, ``protocol=lmms_eval`` (default; ``lmms_eval/tasks/gqa/gqa.yaml`` of lmms-eval
v0.7.2, commit cb45ac4d): ``exact_match`` with ``ignore_case`` and
``ignore_punctuation`` (:func:`tokenbench.tasks.lmms_answers.gqa_exact_match`: the
stripped prediction, lower-cased, every ASCII punctuation character deleted, equals the
answer so treated). ``protocol=llava``: exact match after the official VQA answer
processing on both sides (:func:`tokenbench.answers.vqa_normalize`), which also forgives
articles and number words. ``aggregate`` gives ``accuracy`` (lmms-eval's
``exact_match``, in percent) and ``KIND/accuracy`` per ``types.structural`` (verify,
query, choose, logical, compare).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import vqa_normalize
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import accuracy_by_kind, check_images, data_error, first_file, need_keys, read_json
from tokenbench.tasks.hf import hf_rows, is_hf_folder
from tokenbench.tasks.lmms_answers import check_protocol, gqa_exact_match

FILE = "testdev_balanced_questions.json"
SUFFIX = "\nAnswer the question using a single word or phrase."
LAYOUT = (
    f"DIR/{FILE} (dict question id -> {{imageId, question, answer, types}}; also DIR/questions/ or DIR/data/) "
    "+ DIR/images/{imageId}.jpg (or option images=DIR), "
    "or lmms-lab/GQA as parquet: DIR/testdev_balanced_instructions/testdev-*.parquet (id, imageId, question, answer, types) "
    "+ DIR/testdev_balanced_images/testdev-*.parquet (id, image)"
)
HF_ID = "lmms-lab/GQA"
HF_QUESTIONS, HF_IMAGES, HF_SPLIT = "testdev_balanced_instructions", "testdev_balanced_images", "testdev"


class GqaTask(Task):
    name = "gqa"
    description = "GQA balanced test-dev; exact match, case and punctuation ignored (protocol=llava: after VQA normalisation)."
    metric_kind = "binary"
    metric_name = "exact match (VQA-normalised)"
    max_new_tokens = 16
    defaults = {"images": None, "protocol": "lmms_eval"}

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        self.options["protocol"] = check_protocol(self.options["protocol"])

    def load(self) -> Sequence[Sample]:
        if not self.path:
            return self._load_hf(None)
        root = Path(str(self.path))
        if root.is_dir() and is_hf_folder(root, HF_SPLIT, HF_QUESTIONS):
            return self._load_hf(root)
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

    def _load_hf(self, root: Path | None) -> list[Sample]:
        common: dict[str, Any] = {"split": HF_SPLIT, "layout": LAYOUT, "task": self.name}
        questions = hf_rows(HF_ID, root, config=HF_QUESTIONS, schema=("id", "imageId", "question", "answer"), image_columns=(), **common)
        images = hf_rows(HF_ID, root, config=HF_IMAGES, schema=("id", "image"), **common)
        row_of = {str(row["id"]): i for i, row in enumerate(images)}
        samples = []
        for i, q in enumerate(questions):
            image_id = str(q["imageId"])
            if image_id not in row_of:
                raise data_error(f"{questions.where} row {i}", f"imageId {image_id!r} is not an id of config {HF_IMAGES}", LAYOUT)
            types = q.get("types")
            structural = types.get("structural") if isinstance(types, Mapping) else None
            samples.append(
                Sample(
                    id=str(q["id"]),
                    image=images.image(row_of[image_id]),
                    question=str(q["question"]),
                    answers=(str(q["answer"]),),
                    kind=str(structural or "unknown"),
                )
            )
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question + SUFFIX

    def score(self, sample: Sample, prediction: str) -> float:
        if self.options["protocol"] == "lmms_eval":
            return gqa_exact_match(prediction, sample.answers[0])
        return float(vqa_normalize(prediction) == vqa_normalize(sample.answers[0]))

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        return accuracy_by_kind(samples, scores)
