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
from collections.abc import Iterable

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
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


# --- official benchmark answer processing ---------------------------------------------
# The VQA answer processing of the official VQA / EvalAI evaluation (also used by
# LLaVA's TextVQA evaluator, ``m4c_evaluator.EvalAIAnswerProcessor``).

_VQA_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "shant": "shan't",
    "shed": "she'd",
    "shes": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "somebodyd": "somebody'd",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethings": "something's",
    "thered": "there'd",
    "thereve": "there've",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (no-op) look-ahead, so
# in effect every period not followed by a digit is removed. Kept as written for fidelity.
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_NUM = re.compile(r"(\d)(,)(\d)")


def vqa_normalize(text: str) -> str:
    """The official VQA (EvalAI) answer processing.

    Lower-case; drop ``,`` and ``?``; punctuation removed (or turned into a space when
    glued between words); periods not followed by a digit removed; number words zero–ten
    to digits; articles dropped; common contractions restored (``dont`` → ``don't``).

    >>> vqa_normalize("The Two dogs.")
    '2 dogs'
    >>> vqa_normalize("3.5")
    '3.5'
    >>> vqa_normalize("dont know")
    "don't know"
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or _VQA_COMMA_NUM.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _VQA_PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(prediction: str, answers: Iterable[str]) -> float:
    """The official VQA accuracy of one prediction against (usually ten) human answers.

    For each human answer left out in turn, ``min(1, matches among the other nine / 3)``;
    the mean over the leave-one-out subsets. With 10 answers of which k match:
    k=1 → 0.3, k=2 → 0.6, k=3 → 0.9, k≥4 → 1.0.

    >>> vqa_accuracy("Coca Cola", ["coca cola"] * 2 + ["coke"] * 8)
    0.6
    """
    gts = [vqa_normalize(a) for a in answers]
    if not gts:
        return 0.0
    pred = vqa_normalize(prediction)
    k = sum(g == pred for g in gts)
    accs = [min(1.0, (k - (g == pred)) / 3.0) for g in gts]
    return round(sum(accs) / len(accs), 10)


def pope_yes_no(prediction: str) -> str:
    """``"yes"`` or ``"no"`` as the official POPE evaluation (LLaVA's ``eval_pope.py``) reads it.

    Only the first sentence counts (text up to the first ``.``); commas are dropped; the
    answer is ``"no"`` if any space-separated word is ``No``, ``no`` or ``not``, else ``"yes"``.

    >>> pope_yes_no("No, there is no dog."), pope_yes_no("Yes. There is no cat.")
    ('no', 'yes')
    """
    text = prediction.split(".")[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def mme_yes_no(prediction: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` as the official MME ``calculation.py`` reads it.

    Lower-cased; an exact ``yes``/``no`` counts, else ``yes`` or ``no`` appearing in the
    first four characters; anything else is ``"other"`` (always wrong).

    >>> mme_yes_no("Yes, it is."), mme_yes_no("No"), mme_yes_no("There is one.")
    ('yes', 'no', 'other')
    """
    pred = prediction.strip().lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def option_letter(prediction: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The option a multiple-choice prediction names.

    A bare letter (``B``, ``B.``, ``(B)``) first; else the one option whose text the
    prediction equals after normalisation; else a leading letter (``B. a dog``, see
    :func:`choice_letter`).

    >>> option_letter("(B)", ["cat", "dog"]), option_letter("A dog.", ["cat", "dog"])
    ('B', 'B')
    >>> option_letter("B. a cat", ["cat", "dog"]), option_letter("?", ["x"])
    ('B', None)
    """
    n = len(choices)
    bare = re.fullmatch(r"\s*\(?([A-Za-z])[\).:]?\s*", prediction)
    if bare and bare.group(1).upper() in "ABCDEFGHIJ"[:n]:
        return bare.group(1).upper()
    pred = normalize_answer(prediction)
    hits = ["ABCDEFGHIJ"[i] for i, c in enumerate(choices) if normalize_answer(c) == pred]
    if len(hits) == 1:
        return hits[0]
    return choice_letter(prediction, n)
