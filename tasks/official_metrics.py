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

#: the lmms-eval release whose task definitions these five benchmarks follow (the same as the other benchmark tasks)
LMMS_EVAL_VERSION = "lmms-eval v0.7.2 (commit cb45ac4d)"


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


# --- MMStar: lmms_eval/tasks/_task_utils/mcq_extract.py (extract_mcq_answer) ---------------

_ANSWER_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)
#: how sure each answer format is that it names the intended letter (higher wins)
_FORMAT_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3, "space": 2, "fallback": 0}
_FORMATS = (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"), ("space", "{} "))


def mcq_letter(response: str, letters: Sequence[str] = "ABCD") -> str:
    """The option letter ``extract_mcq_answer`` reads from ``response``; ``""`` if none.

    Candidates come from several formats (``(B)``, ``B.``, ``B:``, ``B)``, ``B `` , after an
    answer phrase, a standalone leading or trailing letter); the best-ranked format wins
    and, within it, the last occurrence. Only when no format matches does any occurrence
    of a letter count.

    >>> mcq_letter("B"), mcq_letter("I think A: no, B. is right"), mcq_letter("none")
    ('B', 'B', '')
    """
    if not response.strip():
        return ""
    text = response.strip()
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[str, int, str]] = []
    for name, pattern in _FORMATS:
        found += [(c, text.rfind(pattern.format(c)), name) for c in letters if pattern.format(c) in text]
    lowered = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            found += [(c, text.find(c, at + len(phrase)), "phrase") for c in letters if text.find(c, at + len(phrase)) != -1]
    bare = text.strip()
    found += [(c, 0, "start") for c in letters if bare.startswith(c) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [(c, len(text) - 1, "end") for c in letters if bare.endswith(c) and (len(bare) == 1 or not bare[-2].isalpha())]
    if not found:
        found = [(c, text.rfind(c), "fallback") for c in letters if c in text]
    if not found:
        return ""
    # highest rank, then the latest position; on a full tie the first candidate found (a stable sort's order)
    best = max(_FORMAT_RANK[name] for _, _, name in found)
    top = [f for f in found if _FORMAT_RANK[f[2]] == best]
    latest = max(pos for _, pos, _ in top)
    return next(c for c, pos, _ in top if pos == latest)


# --- SEED-Bench: lmms_eval/tasks/seedbench/utils.py (seed_process_result, seed_aggregation_result) ---


def seed_letter(prediction: str) -> str:
    """The letter SEED-Bench's lmms-eval task reads: the stripped prediction's first character (all of it if shorter).

    >>> seed_letter(" B. a dog"), seed_letter("The answer is B")
    ('B', 'T')
    """
    pred = prediction.strip()
    return pred[0] if len(pred) > 1 else pred
