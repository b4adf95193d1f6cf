"""Answer normalisation and matching shared by the tasks.

>>> normalize_answer("The Two  cats!")
'2 cats'
>>> exact_match("Two.", ["2"])
1.0
>>> choice_letter("B. a dog", 4)
'B'
"""

from __future__ import annotations

import re
from typing import Iterable

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, map number words to digits."""
    words = _PUNCT.sub(" ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised accepted answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def choice_letter(prediction: str, n_choices: int) -> str | None:
    """The option letter a free-text prediction names (``"B"``, ``"(b)"``, ``"B. dog"``)."""
    letters = "ABCDEFGHIJ"[:n_choices]
    m = re.match(r"\s*\(?([A-Za-z])(?:[\).:\s]|$)", prediction)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None
