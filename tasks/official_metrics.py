"""The official per-sample metrics of OCRBench, ChartQA, DocVQA, MMStar and SEED-Bench, as lmms-eval computes them.

Each function restates, in its own code, the behaviour of lmms-eval ``LMMS_EVAL_VERSION``
(the file it follows is named per function). lmms-eval cuts a generation at the task's
``until`` strings (inside the model wrapper) and strips it before scoring;
:func:`lmms_eval_prediction` does both, so the tasks pass raw predictions through it.

>>> anls("the cats", ["The cat"])  # 1 edit over max(8, 7) characters
0.875
>>> relaxed_correctness("104.9", "100"), relaxed_correctness("105.1", "100")
(True, False)
>>> ocrbench_match("It says HELLO.", ["hello"], handwritten_math=False)
True
>>> mcq_letter("The answer is (C).", "ABCD")
'C'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenbench.tasks.lmms_answers import LMMS_EVAL_VERSION, mcq_letter

__all__ = [
    "LMMS_EVAL_VERSION",
    "anls",
    "levenshtein",
    "lmms_eval_prediction",
    "mcq_letter",
    "ocrbench_match",
    "relaxed_correctness",
    "seed_letter",
]


def lmms_eval_prediction(prediction: str, stop_strings: Sequence[str]) -> str:
    """``prediction`` as lmms-eval scores it: cut before the first of ``stop_strings`` (the ``until`` list), then stripped.

    >>> lmms_eval_prediction(" 42\\n\\nBecause ...", ("\\n\\n",))
    '42'
    """
    for stop in stop_strings:
        if stop:
            prediction = prediction.split(stop)[0]
    return prediction.strip()


# --- DocVQA: lmms_eval/api/metrics.py (anls, levenshtein_distance) ----------------------------


def levenshtein(a: str, b: str) -> int:
    """The edit distance (insertions, deletions, substitutions) between ``a`` and ``b``.

    >>> levenshtein("kitten", "sitting")
    3
    """
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        current = [j]
        for i, ca in enumerate(a, 1):
            current.append(previous[i - 1] if ca == cb else 1 + min(previous[i - 1], previous[i], current[i - 1]))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Iterable[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one prediction: ``1 - min NL`` over the answers, 0 below ``threshold``.

    Both strings are lower-cased, stripped and their whitespace runs collapsed before
    the distance; the normaliser is the *raw* length of the longer of the two (as
    lmms-eval's ``anls`` measures ``len(answer.upper())`` and ``len(pred.upper())``).
    A similarity below ``threshold`` (0.5) counts 0; no answers scores 0.

    >>> anls("abc", ["xyz"]), anls("", [""])
    (0.0, 1.0)
    """
    pred = " ".join(prediction.strip().lower().split())
    distances = []
    for answer in answers:
        gold = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(gold, pred) / length)
    if not distances:
        return 0.0
    similarity = 1.0 - min(distances)
    return 0.0 if similarity < threshold else similarity


# --- ChartQA: lmms_eval/tasks/chartqa/utils.py (relaxed_correctness) ------------------------


def _number(text: str) -> float | None:
    """``text`` as a float; a trailing ``%`` divides by 100; ``None`` if it is not a number."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy: numbers within 5 % of a non-zero target, anything else case-insensitively equal.

    Both sides are read as numbers when they parse (``"12%"`` is 0.12, so ``"12"`` against
    ``"12%"`` is wrong); a target of 0, or a side that is not a number, falls back to the
    case-insensitive string comparison.

    >>> relaxed_correctness("12%", "12%"), relaxed_correctness("12", "12%"), relaxed_correctness("Yes", "yes")
    (True, False, True)
    """
    pred, gold = _number(prediction), _number(target)
    if pred is not None and gold:
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.lower() == target.lower()


# --- OCRBench: lmms_eval/tasks/ocrbench/utils.py (ocrbench_process_results) ----------------


def ocrbench_match(prediction: str, answers: Iterable[str], *, handwritten_math: bool) -> bool:
    """OCRBench's rule: right when any answer is contained in the prediction.

    Handwritten mathematical expressions (source dataset ``HME100k``) compare
    case-sensitively with every newline and space removed from both sides (LaTeX spacing
    does not count); every other question compares lower-cased and stripped, newlines
    read as spaces.

    >>> ocrbench_match("x ^ { 2 }", ["x^{2}"], handwritten_math=True), ocrbench_match("X^{2}", ["x^{2}"], handwritten_math=True)
    (True, False)
    """
    for answer in answers:
        if handwritten_math:
            gold = answer.strip().replace("\n", " ").replace(" ", "")
            pred = prediction.strip().replace("\n", " ").replace(" ", "")
        else:
            gold = answer.lower().strip().replace("\n", " ")
            pred = prediction.lower().strip().replace("\n", " ")
        if gold in pred:
            return True
    return False


# --- SEED-Bench: lmms_eval/tasks/seedbench/utils.py (seed_process_result, seed_aggregation_result) ---


def seed_letter(prediction: str) -> str:
    """The letter SEED-Bench's lmms-eval task reads: the stripped prediction's first character (all of it if shorter).

    >>> seed_letter(" B. a dog"), seed_letter("The answer is B")
    ('B', 'T')
    """
    pred = prediction.strip()
    return pred[0] if len(pred) > 1 else pred
