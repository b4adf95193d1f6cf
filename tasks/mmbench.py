"""``mmbench_en_dev``: MMBench English dev set, multiple choice, circular evaluation.

Data (``--task mmbench_en_dev`` or ``--task mmbench_en_dev:PATH``):

* no path: the Hugging Face dataset ``lmms-lab/MMBench``, config ``en``, split ``dev``
  (4,329 rows, circular copies included; columns ``index, question, hint, answer, A,
  B, C, D, category, image, source, L2-category, comment, split``) from the
  ``datasets`` cache;
* ``PATH`` a local snapshot of it (``PATH/en/dev-*.parquet`` as ``hf download
  lmms-lab/MMBench --repo-type dataset --local-dir PATH`` leaves it); images are
  decoded lazily, one per sample;
* ``PATH`` the official dev TSV (``mmbench_dev_en_20231003.tsv``,
  ``mmbench_dev_20230712.tsv`` or VLMEvalKit's ``MMBench_DEV_EN.tsv``; ``PATH`` is the
  file or a folder holding exactly one ``*.tsv``), tab-separated with a header row and
  columns ``index, question, hint, A, B, C, D, answer, category, l2-category, image,
  ...``; the image is base64-encoded (decoded with PIL, lazily), or, as VLMEvalKit
  writes duplicates, the ``index`` of the row whose image it shares.

Options are the non-empty columns ``A``, ``B``, ... in order.

Circular evaluation (the official protocol, default ``circular=true``): a question with
N options is asked N times, its options rotated by r = 0 … N-1, and it counts as
correct only if every rotation is answered correctly. Where the data holds circular
copies (indices ≥ 1,000,000, group = index mod 1,000,000: the hub copy and VLMEvalKit's
legacy TSVs), those rows are the rotations, as lmms-eval evaluates them; otherwise the
rotations are generated (rotation r shows option r+1 first, as LLaVA's ``--all-rounds``
and VLMEvalKit do). :meth:`load` yields one :class:`Sample` per rotation, id
``"{group}-r{r}"``, ``meta={"group", "rotation"}``; :meth:`score` stays per rotation and
:meth:`aggregate` computes the circular ``accuracy`` over groups (plus per-category and
rotation-0 accuracy). A stratified ``--limit`` keeps or drops a group's rotations
together. With ``circular=false`` each question is asked once in its original order and
``accuracy`` is plain accuracy (higher than circular; not the published protocol).

Prompt and metric, ``protocol=lmms_eval`` (default; lmms-eval v0.7.2, commit cb45ac4d,
``lmms_eval/tasks/mmbench/en_utils.py`` and ``mmbench_evals.py``, the
``mmbench_en_dev_static`` evaluation, which needs no GPT API)::

    {hint} {question} There are several options:
    A. {option A}
    B. {option B}

    Answer with the option's letter from the given choices directly.

(``"{hint} "`` only when there is a hint), and the letter read by
:func:`tokenbench.tasks.lmms_answers.mmbench_letter` (a letter token, else the one
option text the answer contains, else ``extract_mcq_answer``). Deviation: lmms-eval's
default ``mmbench_en_dev`` asks GPT to match an answer that names no option; that needs
an API key and is not reproduced (for models that answer with a letter it never runs).
``protocol=llava`` (LLaVA-1.5's ``model_vqa_mmbench --single-pred-prompt``):
``[hint\\n]question\\nA. ...\\nB. ...\\nAnswer with the option's letter from the given
choices directly.`` read with :func:`tokenbench.answers.option_letter` (LLaVA-1.5-7B: 64.7,
circular).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.answers import option_letter
from tokenbench.task import Sample, Task
from tokenbench.tasks.files import accuracy_by_kind, as_bool, choice_prompt, data_error, need_keys
from tokenbench.tasks.hf import hf_rows, is_hf_folder
from tokenbench.tasks.lmms_answers import check_protocol, mmbench_letter

LETTERS = "ABCDEFGHIJ"
COPY = 1_000_000
LAYOUT = (
    "a TSV file (e.g. mmbench_dev_en_20231003.tsv) with header columns index, question, hint, A, B, C, D, answer, category, image (base64), "
    "or lmms-lab/MMBench as parquet: DIR/en/dev-*.parquet (index, question, hint, answer, A, B, C, D, category, image, ...)"
)
HF_ID, HF_CONFIG, HF_SPLIT = "lmms-lab/MMBench", "en", "dev"
HF_SCHEMA = ("index", "question", "hint", "answer", "A", "B", "category", "image")
OPTIONS_HEADER = "There are several options:"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def _empty(value: Any) -> bool:
    return value is None or str(value).strip() in ("", "nan", "NaN", "None")


class MmbenchTask(Task):
    name = "mmbench_en_dev"
    description = "MMBench English dev; circular evaluation (every option rotation must be right)."
    metric_kind = "binary"
    metric_name = "option accuracy (per rotation)"
    max_new_tokens = 8
    #: an item's option rotations (circular=true) are one cluster for the paired statistics
    cluster_key = "group"
    defaults = {"circular": True, "protocol": "lmms_eval"}

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(path, **options)
        self.options["circular"] = as_bool(self.options["circular"], "circular")
        self.options["protocol"] = check_protocol(self.options["protocol"])

    def _tsv(self) -> Path:
        path = Path(str(self.path))
        if path.is_dir():
            found = sorted(path.glob("*.tsv"))
            if len(found) != 1:
                raise data_error(path, f"expected one .tsv file in the folder, found {len(found)}", LAYOUT)
            path = found[0]
        if not path.is_file():
            raise data_error(path, "file not found", LAYOUT)
        return path

    def _hf_rows(self, root: Path | None) -> dict[int, dict[str, Any]]:
        rows = hf_rows(HF_ID, root, config=HF_CONFIG, split=HF_SPLIT, schema=HF_SCHEMA, layout=LAYOUT, task=self.name)
        by_index: dict[int, dict[str, Any]] = {}
        for i, row in enumerate(rows):
            try:
                by_index[int(float(row["index"]))] = {**row, "_where": f"{rows.where} row {i}", "_image": rows.image(i)}
            except (TypeError, ValueError):
                raise data_error(f"{rows.where} row {i}", f"index {row['index']!r} is not a number", LAYOUT) from None
        return by_index

    def _tsv_rows(self) -> dict[int, dict[str, Any]]:
        path = self._tsv()
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        try:
            with path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise data_error(path, f"cannot read as TSV ({exc})", LAYOUT) from None
        if not rows:
            raise data_error(path, "no rows", LAYOUT)
        need_keys(rows[0], ("index", "question", "answer", "image", "A", "B"), f"{path} header", LAYOUT)
        by_index: dict[int, dict[str, Any]] = {}
        for n, row in enumerate(rows, 2):
            try:
                by_index[int(float(row["index"]))] = {**row, "_where": f"{path}:{n}"}
            except (TypeError, ValueError):
                raise data_error(f"{path}:{n}", f"index {row['index']!r} is not a number", LAYOUT) from None
        return by_index

    def load(self) -> Sequence[Sample]:
        root = Path(str(self.path)) if self.path else None
        if root is None or (root.is_dir() and is_hf_folder(root, HF_SPLIT, HF_CONFIG) and not list(root.glob("*.tsv"))):
            by_index = self._hf_rows(root)
        else:
            by_index = self._tsv_rows()
        copies = any(i >= COPY for i in by_index)
        images: dict[int, Any] = {}
        samples: list[Sample] = []
        for index, row in by_index.items():
            if copies and not self.options["circular"] and index >= COPY:
                continue
            where = str(row["_where"])
            options = [str(row[c]) for c in LETTERS if c in row and not _empty(row[c])]
            answer = str(row["answer"]).strip().upper()
            if len(options) < 2 or answer not in LETTERS[: len(options)]:
                raise data_error(where, f"needs options A, B (at least) and an answer among them, got {row['answer']!r}", LAYOUT)
            image = row["_image"] if "_image" in row else self._image(index, by_index, images, where)
            common = {"question": str(row["question"]), "image": image, "kind": str(row.get("category") or "unknown")}
            hint = "" if _empty(row.get("hint")) else str(row["hint"]).strip()
            target = LETTERS.index(answer)
            if copies:
                circ = self.options["circular"]
                rotations = [(index % COPY, index // COPY, options, target)] if circ else [(index, 0, options, target)]
            elif self.options["circular"]:
                k = len(options)
                rotations = [(index, r, options[r:] + options[:r], (target - r) % k) for r in range(k)]
            else:
                rotations = [(index, 0, options, target)]
            for group, r, opts, t in rotations:
                meta = {"hint": hint, "group": group, "rotation": r} if self.options["circular"] else {"hint": hint}
                sid = f"{group}-r{r}" if self.options["circular"] else str(group)
                samples.append(Sample(id=sid, answers=(LETTERS[t],), choices=tuple(opts), meta=meta, **common))
        return samples

    @staticmethod
    def _image(index: int, rows: dict[int, dict[str, Any]], cache: dict[int, Any], where: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        value = str(rows[index]["image"]).strip()
        if len(value) < 64 and value.isdigit() and int(value) in rows:
            index, value = int(value), str(rows[int(value)]["image"]).strip()
        if index not in cache:
            try:
                cache[index] = Image.open(io.BytesIO(base64.b64decode(value)))
            except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
                raise data_error(where, f"column 'image' is not a base64-encoded image ({type(exc).__name__})", LAYOUT) from None
        return cache[index]

    def prompt(self, sample: Sample, family: str) -> str:
        hint = str(sample.meta.get("hint", ""))
        if self.options["protocol"] == "llava":
            return choice_prompt(sample.question, sample.choices or (), hint)
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(sample.choices or ()))
        head = f"{hint} " if hint else ""
        return f"{head}{sample.question} {OPTIONS_HEADER}\n{options}\n{POST_PROMPT}"

    def score(self, sample: Sample, prediction: str) -> float:
        choices = sample.choices or ()
        if self.options["protocol"] == "lmms_eval":
            return float(mmbench_letter(prediction, {LETTERS[i]: c for i, c in enumerate(choices)}) == sample.answers[0])
        return float(option_letter(prediction, choices) == sample.answers[0])

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[float], predictions: Sequence[str]) -> dict[str, float]:
        if not any("group" in s.meta for s in samples):
            return accuracy_by_kind(samples, scores)
        groups: dict[Any, list[float]] = {}
        kinds: dict[Any, str] = {}
        for s, x in zip(samples, scores):
            groups.setdefault(s.meta["group"], []).append(x)
            kinds[s.meta["group"]] = str(s.kind)
        ok = {g: all(x >= 1.0 for x in xs) for g, xs in groups.items()}
        out = {"accuracy": 100.0 * sum(ok.values()) / len(ok)}
        for kind in sorted(set(kinds.values())):
            gs = [g for g in ok if kinds[g] == kind]
            out[f"{kind}/accuracy"] = 100.0 * sum(ok[g] for g in gs) / len(gs)
        first = [x for s, x in zip(samples, scores) if s.meta.get("rotation") == 0]
        if first:
            out["rotation0_accuracy"] = 100.0 * sum(first) / len(first)
        return out
