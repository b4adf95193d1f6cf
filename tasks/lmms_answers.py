"""How lmms-eval reads a model's answer, per benchmark (the ``process_results`` of each task).

The tasks default to these (option ``protocol=lmms_eval``) so that an unreduced run
reproduces the numbers people publish from lmms-eval; ``protocol=llava`` keeps LLaVA-1.5's
own evaluation scripts (:mod:`tokenbench.answers`). Every function here restates, in its
own code, the behaviour of lmms-eval ``LMMS_EVAL_VERSION`` (files named per function);
lmms-eval strips every generation before scoring, and so do these.

>>> gqa_exact_match(" Yes.", "yes"), pope_answer(" Yes "), mme_answer("N")
(1.0, 'yes', 'no')
>>> sqa_exact_match("B. bird", "B"), sqa_exact_match("(B)", "B")
(1.0, 0.0)
>>> mmbench_letter("The answer is (C).", {"A": "cat", "B": "dog", "C": "cow"})
'C'
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

__all__ = ["LMMS_EVAL_VERSION", "PROTOCOLS", "gqa_exact_match", "mmbench_letter", "mcq_letter", "mme_answer", "pope_answer", "sqa_exact_match"]

#: the lmms-eval release whose task definitions the benchmark tasks follow
LMMS_EVAL_VERSION = "lmms-eval v0.7.2 (commit cb45ac4d)"
PROTOCOLS = ("lmms_eval", "llava")

_NO_PUNCT = str.maketrans("", "", string.punctuation)


def check_protocol(value: object) -> str:
    """The ``protocol`` option, validated: ``lmms_eval`` (default) or ``llava``."""
    text = str(value).strip().lower().replace("-", "_")
    if text not in PROTOCOLS:
        raise ValueError(f"option protocol={value!r}: expected lmms_eval or llava")
    return text


def pope_answer(prediction: str) -> str:
    """``pope/utils.py``: the whole stripped, lower-cased prediction (``"yes"``/``"no"`` or anything else)."""
    return prediction.strip().lower()


def gqa_exact_match(prediction: str, answer: str) -> float:
    """The ``exact_match`` metric with ``ignore_case`` and ``ignore_punctuation`` (GQA, ``api/metrics.py``)."""
    return float(prediction.strip().lower().translate(_NO_PUNCT) == answer.lower().translate(_NO_PUNCT))


def mme_answer(prediction: str) -> str:
    """``mme/utils.py`` ``parse_pred_ans``: ``"yes"``, ``"no"`` or ``"other"``.

    Lower-cased, stripped, periods removed; exactly yes/no; a single letter ``y``/``n``;
    else yes or no within the first four characters (yes first).
    """
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def sqa_exact_match(prediction: str, letter: str) -> float:
    """``scienceqa/utils.py`` ``sqa_process_results``: the bare letter (any case), or ``"X. ..."`` with X upper-case."""
    pred, target = prediction.strip(), letter.strip().lower()
    if pred.lower() == target:
        return 1.0
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return float(pred[0].lower() == target)
    return 0.0


# --- MMBench: mmbench/mmbench_evals.py (can_infer, static variant) + _task_utils/mcq_extract.py ---

_AFFIXES = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))


def _letter_token(answer: str) -> str | None:
    """``can_infer_option``: a letter A-E standing alone as a word, or with one of the usual affixes, exactly once."""
    words = [w.strip() for w in answer.split()]
    letters = "ABCDE"
    alone = [c for c in letters if c in words]
    if len(alone) == 1 and not ("A" in words and len(words) > 3):  # "A" may be an article
        return alone[0]
    for head, tail in _AFFIXES:
        hits = [c for c in letters if f"{head}{c}{tail}" in words]
        if len(hits) == 1:
            return hits[0]
    return None


def _option_text(answer: str, options: Mapping[str, str]) -> str | None:
    """``can_infer_text``: the one option whose lower-cased text occurs in the answer."""
    low = answer.lower()
    hits = [k for k, v in options.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


# --- MMBench, MMStar: _task_utils/mcq_extract.py (extract_mcq_answer) -----------------------

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


def mmbench_letter(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter lmms-eval's static MMBench evaluation reads from ``prediction`` (``None``: none).

    ``options`` maps the shown letters to their texts. First ``can_infer`` (a letter
    token, else the one option text contained in the answer), else ``extract_mcq_answer``.
    """
    pred = prediction.strip()
    return _letter_token(pred) or _option_text(pred, options) or mcq_letter(pred, sorted(options)) or None
