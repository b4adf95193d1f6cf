"""``pope``: POPE object hallucination on COCO val2014 (yes/no questions).

Data (``--task pope:PATH``), either

* the POPE repository's files ``coco_pope_{random,popular,adversarial}.json`` (JSON
  lines ``{"question_id", "image", "text", "label": "yes"|"no"}``) in ``PATH``,
  ``PATH/coco`` or ``PATH/output/coco``, with the COCO ``val2014`` images in option
  ``images=DIR`` (default ``PATH/val2014`` if it exists, else ``PATH``); or
* the lmms-eval hub dataset ``lmms-lab/POPE`` saved with ``datasets.save_to_disk`` to
  ``PATH`` (needs the ``datasets`` package, which tokenbench does not install).

Options: ``split=random|popular|adversarial|all`` (default ``all``); ``images=DIR``.
A prediction is read as the official evaluation reads it
(:func:`tokenbench.answers.pope_yes_no`). ``aggregate`` gives accuracy, precision,
recall, F1 (``yes`` is the positive class) and yes-ratio in percent, per split as
``SPLIT/METRIC`` when ``split=all`` together with ``f1_mean``, the mean F1 over the
three splits, which is the single "POPE" number papers report (LLaVA-1.5-7B: 85.9).
Prompt (every family): the question + ``"\\nAnswer the question using a single word or
phrase."``, as in LLaVA-1.5's evaluation; the adapter applies the chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import pope_yes_no
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import check_images, data_error, need_dir, need_keys, read_json

SPLITS = ("random", "popular", "adversarial")
SUFFIX = "\nAnswer the question using a single word or phrase."
LAYOUT = (
    "DIR/coco_pope_{random,popular,adversarial}.json (JSON lines with question_id, image, text, label) "
    "[or DIR/coco/ or DIR/output/coco/] + COCO val2014 images in DIR/val2014/ (or option images=DIR), "
    "or lmms-lab/POPE saved with datasets.save_to_disk"
)


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


class PopeTask(Task):
    name = "pope"
    description = "POPE object hallucination (COCO val2014), yes/no; F1, accuracy, yes-ratio per split."
    metric_kind = "binary"
    metric_name = "accuracy (yes/no)"
    max_new_tokens = 16
    needs_path = True
    defaults = {"split": "all", "images": None}

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        split = str(self.options["split"]).lower()
        if split not in (*SPLITS, "all"):
            raise ValueError(f"option split={split!r}: expected random, popular, adversarial or all")
        self.options["split"] = split

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.options["split"] == "all" else (self.options["split"],)

    def load(self) -> Sequence[Sample]:
        root = need_dir(self.path, LAYOUT)
        if any((root / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
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
                    Sample(id=f"{split}-{obj['question_id']}", image=str(images / obj["image"]), question=str(obj["text"]), answers=(label,), kind=split)
                )
        check_images((Path(s.image) for s in samples), LAYOUT)
        return samples

    def _load_hf(self, root: Path) -> list[Sample]:
        try:
            import datasets
        except ImportError:
            raise data_error(
                root,
                "a Hugging Face dataset saved with save_to_disk needs the 'datasets' package, which is "
                "not installed (pip install datasets), or use the POPE repository's JSON files",
                LAYOUT,
            ) from None
        ds = datasets.load_from_disk(str(root))
        if hasattr(ds, "keys"):  # a DatasetDict: lmms-lab/POPE has one split, "test"
            ds = ds["test"] if "test" in ds else ds[next(iter(ds.keys()))]
        samples = []
        for i, row in enumerate(ds):
            need_keys(row, ("question_id", "question", "answer", "image", "category"), f"{root} row {i}", LAYOUT)
            if row["category"] in self.splits:
                samples.append(
                    Sample(
                        id=f"{row['category']}-{row['question_id']}",
                        image=row["image"],
                        question=str(row["question"]),
                        answers=(str(row["answer"]).strip().lower(),),
                        kind=str(row["category"]),
                    )
                )
        if not samples:
            raise data_error(root, f"no rows of split(s) {', '.join(self.splits)}", LAYOUT)
        return samples

    def prompt(self, sample: Sample, family: str) -> str:
        return sample.question + SUFFIX

    def score(self, sample: Sample, prediction: str) -> float:
        return float(pope_yes_no(prediction) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        preds = [pope_yes_no(p) for p in predictions]
        labels = [s.answers[0] for s in samples]
        kinds = sorted({str(s.kind) for s in samples}, key=lambda k: (k not in SPLITS, SPLITS.index(k) if k in SPLITS else 0, k))
        if len(kinds) <= 1:
            return binary_metrics(preds, labels)
        out: dict[str, float] = {}
        for kind in kinds:
            idx = [i for i, s in enumerate(samples) if str(s.kind) == kind]
            for key, value in binary_metrics([preds[i] for i in idx], [labels[i] for i in idx]).items():
                out[f"{kind}/{key}"] = value
        out["f1_mean"] = sum(out[f"{k}/f1"] for k in kinds) / len(kinds)
        out["accuracy_mean"] = sum(out[f"{k}/accuracy"] for k in kinds) / len(kinds)
        return out
