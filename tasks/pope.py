"""``pope``: POPE object hallucination on COCO val2014 (yes/no questions).

Data (``--task pope`` or ``--task pope:PATH``):

* no path: the Hugging Face dataset ``lmms-lab/POPE`` (split ``test``, 9,000 rows,
  columns ``id, question_id, question, answer, image_source, image, category``) from
  the ``datasets`` cache (``HF_DATASETS_OFFLINE=1`` never fetches);
* ``PATH`` a local copy of it: the parquet files (``PATH/data/test-*.parquet``) as
  ``hf download lmms-lab/POPE --repo-type dataset --local-dir PATH`` leaves them, or a
  ``Dataset.save_to_disk`` folder; images are decoded lazily, one per sample;
* ``PATH`` the POPE repository's files ``coco_pope_{random,popular,adversarial}.json``
  (JSON lines ``{"question_id", "image", "text", "label": "yes"|"no"}``) in ``PATH``,
  ``PATH/coco`` or ``PATH/output/coco``, with the COCO ``val2014`` images in option
  ``images=DIR`` (default ``PATH/val2014`` if it exists, else ``PATH``).

Options: ``split=random|popular|adversarial|all`` (default ``all``; the ``category``
column on the hub copy); ``images=DIR``; ``protocol=lmms_eval|llava``.

Prompt (every family, both protocols; lmms-eval's default ``doc_to_text``): the
stripped question + ``"\\nAnswer the question using a single word or phrase."``; the
adapter applies the chat template.

Metric, ``protocol=lmms_eval`` (default; ``lmms_eval/tasks/pope/utils.py`` of
lmms-eval v0.7.2, commit cb45ac4d): a prediction is right when, stripped and
lower-cased, it *is* the label (``"Yes."`` is not ``yes``); precision, recall and F1 take
``yes`` as the positive class and count only predictions that are exactly yes or no.
``aggregate`` gives ``accuracy``, ``precision``, ``recall``, ``f1`` over every loaded
sample (lmms-eval's ``pope_*`` numbers, here in percent), and with ``split=all`` the
same per split as ``SPLIT/METRIC`` plus ``f1_mean``/``accuracy_mean`` over the splits
(the "POPE" number of the LLaVA-1.5 paper: 85.9). Deviation: ``yes_ratio`` is the share
of *predictions* that are yes (POPE's definition); lmms-eval's ``pope_yes_ratio``
counts the ground-truth labels instead (always 50 on POPE).
``protocol=llava``: a prediction is read as LLaVA's ``eval_pope.py`` reads it
(:func:`tokenbench.answers.pope_yes_no`: first sentence, any word no/not means no).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import pope_yes_no
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import check_images, data_error, need_dir, need_keys, read_json
from tokenbench.tasks.hf import hf_rows, is_hf_folder
from tokenbench.tasks.lmms_answers import check_protocol, pope_answer

SPLITS = ("random", "popular", "adversarial")
SUFFIX = "\nAnswer the question using a single word or phrase."
LAYOUT = (
    "DIR/coco_pope_{random,popular,adversarial}.json (JSON lines with question_id, image, text, label) "
    "[or DIR/coco/ or DIR/output/coco/] + COCO val2014 images in DIR/val2014/ (or option images=DIR), "
    "or lmms-lab/POPE as parquet (DIR/data/test-*.parquet with columns id, question_id, question, answer, image_source, image, category) "
    "or saved with datasets.save_to_disk"
)
HF_ID = "lmms-lab/POPE"
HF_SCHEMA = ("question_id", "question", "answer", "image", "category")


def binary_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (percent) with ``yes`` positive."""
    tp = sum(p == "yes" and y == "yes" for p, y in zip(preds, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(preds, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(preds, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(preds, labels))
    n = max(len(labels), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n,
    }


def image_id(name: str) -> str:
    """The COCO image a question is about, as the JSON files (``...jpg``) and the hub copy (``image_source``) both give it.

    >>> image_id("COCO_val2014_000000310196.jpg"), image_id("COCO_val2014_000000310196")
    ('COCO_val2014_000000310196', 'COCO_val2014_000000310196')
    """
    return Path(str(name)).stem


class PopeTask(Task):
    name = "pope"
    description = "POPE object hallucination (COCO val2014), yes/no; F1, accuracy, yes-ratio per split."
    metric_kind = "binary"
    metric_name = "accuracy (yes/no)"
    max_new_tokens = 16
    needs_path = False
    defaults = {"split": "all", "images": None, "protocol": "lmms_eval"}
    #: the questions on one COCO image (across splits) are one cluster for the paired statistics
    cluster_key = "image"

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        split = str(self.options["split"]).lower()
        if split not in (*SPLITS, "all"):
            raise ValueError(f"option split={split!r}: expected random, popular, adversarial or all")
        self.options["split"] = split
        self.options["protocol"] = check_protocol(self.options["protocol"])

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.options["split"] == "all" else (self.options["split"],)

    def load(self) -> Sequence[Sample]:
        if not self.path:
            return self._load_hf(None)
        root = need_dir(self.path, LAYOUT)
        if is_hf_folder(root, "test"):
            return self._load_hf(root)
        first = f"coco_pope_{self.splits[0]}.json"
        folder = next((d for d in (root, root / "coco", root / "output" / "coco") if (d / first).is_file()), root)
        default_images = root / "val2014" if (root / "val2014").is_dir() else root
        images = Path(self.options["images"]) if self.options["images"] else default_images
        samples: list[Sample] = []
        for split in self.splits:
            path = folder / f"coco_pope_{split}.json"
            for lineno, obj in enumerate(read_json(path, LAYOUT, lines=True), 1):
                need_keys(obj, ("question_id", "image", "text", "label"), f"{path}:{lineno}", LAYOUT)
                label = str(obj["label"]).strip().lower()
                if label not in ("yes", "no"):
                    raise data_error(f"{path}:{lineno}", f"label {obj['label']!r} is not yes or no", LAYOUT)
                samples.append(
                    Sample(
                        id=f"{split}-{obj['question_id']}",
                        image=str(images / obj["image"]),
                        question=str(obj["text"]),
                        answers=(label,),
                        kind=split,
                        meta={"image": image_id(obj["image"])},
                    )
                )
        check_images((Path(s.image) for s in samples), LAYOUT)
        return samples

    def _load_hf(self, root: Path | None) -> list[Sample]:
        rows = hf_rows(HF_ID, root, split="test", schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        samples = []
        for i, row in enumerate(rows):
            category = str(row["category"])
            if category not in self.splits:
                continue
            answer = str(row["answer"]).strip().lower()
            if answer not in ("yes", "no"):
                raise data_error(f"{rows.where} row {i}", f"answer {row['answer']!r} is not yes or no", LAYOUT)
            meta = {"image": image_id(row["image_source"])} if row.get("image_source") else {}
            samples.append(
                Sample(id=f"{category}-{row['question_id']}", image=rows.image(i), question=str(row["question"]), answers=(answer,), kind=category, meta=meta)
            )
        if not samples:
            raise data_error(rows.where, f"no rows of split(s) {', '.join(self.splits)} in column 'category'", LAYOUT)
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question.strip() + SUFFIX

    def answer(self, prediction: str) -> str:
        """The prediction as this protocol reads it: ``"yes"``, ``"no"`` or (lmms-eval) anything else."""
        return pope_answer(prediction) if self.options["protocol"] == "lmms_eval" else pope_yes_no(prediction)

    def score(self, sample: Sample, prediction: str) -> float:
        return float(self.answer(prediction) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        preds = [self.answer(p) for p in predictions]
        labels = [s.answers[0] for s in samples]
        kinds = sorted({str(s.kind) for s in samples}, key=lambda k: (k not in SPLITS, SPLITS.index(k) if k in SPLITS else 0, k))
        if len(kinds) <= 1:
            return binary_metrics(preds, labels)
        out: dict[str, float] = binary_metrics(preds, labels)
        for kind in kinds:
            idx = [i for i, s in enumerate(samples) if str(s.kind) == kind]
            for key, value in binary_metrics([preds[i] for i in idx], [labels[i] for i in idx]).items():
                out[f"{kind}/{key}"] = value
        out["f1_mean"] = sum(out[f"{k}/f1"] for k in kinds) / len(kinds)
        out["accuracy_mean"] = sum(out[f"{k}/accuracy"] for k in kinds) / len(kinds)
        return out
