"""Procedural ``shapes`` VQA task: scenes, rendering, questions, splits.

Pure python / numpy / PIL (no torch).  A scene is a 12x12 grid of 12 px cells
(144x144 RGB image).  Every object occupies exactly one grid cell, so with a
vision tower of patch size 12 each object lives in exactly one visual token.

Question kinds (answers are single lowercase words):

* ``attribute``  "what colour is the circle?" / "what shape is the red object?"
  The referent is unique in the scene, and at least one *other* value of the
  asked attribute is also unique (no "odd-one-out" shortcut); answers are
  uniform over colours / shapes.
* ``existence``  "is there a red circle?"  yes/no balanced.  For "no" the scene
  always contains near misses (a red non-circle and a non-red circle); for
  "yes" there is exactly one matching object (and usually near misses too).
* ``count``      "how many red objects are there?"  one/two/three, balanced.
* ``relation``   "what colour is the object left of the blue square?"
  left/right/above/below = the object in the directly adjacent cell.  The
  subject (colour+shape) is unique, its neighbour is placed by the generator,
  and usually a distractor sits in another adjacent cell.

Splits and non-overlap
----------------------
``eval_split(n)`` item ``i`` is generated from
``numpy.random.SeedSequence(entropy=SEED_ENTROPY, spawn_key=(0, i))``;
``train_stream`` draws from ``spawn_key=(1, stream, j)``.  The spawn keys are
disjoint, so the random streams are distinct, and in addition
``train_stream`` explicitly drops any sample whose (objects, question) equals
an item of the default eval split (``eval_keys()``), so the training stream
provably never contains an eval item.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

GRID = 12
CELL = 12
IMAGE_SIZE = GRID * CELL  # 144
SEED_ENTROPY = 20261128
EVAL_SIZE = 1200

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (235, 205, 20),
    "purple": (135, 45, 175),
    "orange": (245, 125, 15),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
KINDS: tuple[str, ...] = ("attribute", "existence", "count", "relation")
DIRECTIONS: dict[str, tuple[int, int]] = {  # phrase -> (drow, dcol) of the neighbour
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (-1, 0),
    "below": (1, 0),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
COUNT_RANGE: tuple[int, int] = (1, 3)  # answers one / two / three
BACKGROUND = (200, 200, 200)
NOISE = 6  # +- uniform per-pixel background noise
# Where the question goes relative to the image, by prompt order.  The shipped reference
# reads "both": the question before the image (so that, with causal attention, the
# visual tokens condition on it) and again after it (so that the text after the image
# carries the question, as on LLaVA, for text-side raters).  It is a fine-tune of a
# question-first model.  Image-first is LLaVA-1.5's own order (the one text-side pruning
# methods assume); before the answer position's attention was supervised onto the answer
# cells, every image-first run sat at the answer prior, because that position had to learn
# question-conditioned retrieval over 144 tokens at once (docs/reference-model/README.md).
PROMPT_TEMPLATES: dict[str, str] = {
    "question-first": "USER: {question}\n<image> ASSISTANT:",
    "image-first": "USER: <image>\n{question} ASSISTANT:",
    "both": "USER: {question}\n<image>\n{question} ASSISTANT:",
}
PROMPT_ORDERS: tuple[str, ...] = tuple(PROMPT_TEMPLATES)
PROMPT_TEMPLATE = PROMPT_TEMPLATES["both"]  # the shipped reference's
_SS = 2  # supersampling factor for anti-aliased drawing


@dataclass(frozen=True)
class ShapeObject:
    row: int
    col: int
    colour: str
    shape: str
    size: float  # fraction of the cell (0.6 .. 0.95)

    @property
    def cell(self) -> int:
        return self.row * GRID + self.col


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    seed: int

    def at(self, row: int, col: int) -> ShapeObject | None:
        for o in self.objects:
            if o.row == row and o.col == col:
                return o
        return None


@dataclass(frozen=True)
class ShapesQuestion:
    id: str
    kind: str
    question: str
    answer: str
    relevant_cells: tuple[int, ...]


# ----------------------------------------------------------------------------
# rendering


def _jitter(seed: int, i: int) -> tuple[float, float]:
    r = np.random.default_rng([seed, 7919, i])
    return float(r.uniform(-1.0, 1.0)), float(r.uniform(-1.0, 1.0))


def render(scene: Scene) -> Image.Image:
    """Render ``scene`` to a deterministic 144x144 RGB image."""
    rng = np.random.default_rng([scene.seed, 104729])
    s = IMAGE_SIZE * _SS
    canvas = Image.new("RGB", (s, s), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, o in enumerate(scene.objects):
        side = o.size * CELL * _SS
        slack = (CELL * _SS - side) / 2.0
        jx, jy = _jitter(scene.seed, i)
        cx = (o.col + 0.5) * CELL * _SS + jx * slack * 0.9
        cy = (o.row + 0.5) * CELL * _SS + jy * slack * 0.9
        h = side / 2.0
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif o.shape == "square":
            h2 = h * 0.88
            draw.rectangle([cx - h2, cy - h2, cx + h2, cy + h2], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=fill)
        else:
            raise ValueError(o.shape)
    img = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.int16)
    bg = np.all(arr == np.array(BACKGROUND, dtype=np.int16), axis=-1, keepdims=True)
    noise = rng.integers(-NOISE, NOISE + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.int16)
    arr = np.where(bg, arr + noise, arr)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------
# scene construction helpers


def _free_cells(rng: np.random.Generator, n: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        c = int(rng.integers(GRID * GRID))
        if c not in taken:
            taken.add(c)
            out.append(c)
    return out


def _size(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.6, 0.95)), 3)


def _build(rng: np.random.Generator, specs: Sequence[tuple[int | None, str, str]]) -> Scene:
    """specs: (cell or None, colour, shape); free cells are drawn at random."""
    taken = {c for c, _, _ in specs if c is not None}
    objs = []
    for cell, colour, shape in specs:
        if cell is None:
            cell = _free_cells(rng, 1, taken)[0]
        objs.append(ShapeObject(cell // GRID, cell % GRID, colour, shape, _size(rng)))
    order = rng.permutation(len(objs))
    objs = [objs[k] for k in order]
    return Scene(tuple(objs), int(rng.integers(2**31 - 1)))


def _n(rng: np.random.Generator, n_objects: tuple[int, int], minimum: int) -> int:
    lo, hi = n_objects
    return max(int(rng.integers(lo, hi + 1)), minimum)


def _pick(rng: np.random.Generator, values: Sequence[str], exclude: Sequence[str] = ()) -> str:
    pool = [v for v in values if v not in exclude]
    return pool[int(rng.integers(len(pool)))]


def _fill_unique(rng, values, subject_value, n_other):
    """Values for ``n_other`` non-subject objects, none equal to subject_value,
    such that at least one of them is unique among them (so the subject is not
    the only object unique in this attribute)."""
    others = [v for v in values if v != subject_value]
    while True:
        vals = [others[int(rng.integers(len(others)))] for _ in range(n_other)]
        if n_other == 0:
            return vals
        counts = {v: vals.count(v) for v in vals}
        if any(c == 1 for c in counts.values()):
            return vals


# ----------------------------------------------------------------------------
# question generators (answer=None -> drawn uniformly)


def _attribute(rng, n_objects, answer=None, subtype=None):
    if subtype is None:
        subtype = "colour" if rng.random() < 0.5 else "shape"
    n = _n(rng, n_objects, 3)
    if subtype == "colour":  # what colour is the <shape>?
        shape = _pick(rng, SHAPES)
        colour = answer or _pick(rng, COLOUR_NAMES)
        other_shapes = _fill_unique(rng, SHAPES, shape, n - 1)
        specs = [(None, colour, shape)] + [(None, _pick(rng, COLOUR_NAMES), s) for s in other_shapes]
        q = f"what colour is the {shape}?"
        ans = colour
    else:  # what shape is the <colour> object?
        colour = _pick(rng, COLOUR_NAMES)
        shape = answer or _pick(rng, SHAPES)
        other_cols = _fill_unique(rng, COLOUR_NAMES, colour, n - 1)
        specs = [(None, colour, shape)] + [(None, c, _pick(rng, SHAPES)) for c in other_cols]
        q = f"what shape is the {colour} object?"
        ans = shape
    scene = _build(rng, specs)
    subj = next(o for o in scene.objects if o.colour == colour and o.shape == shape)
    return scene, q, ans, (subj.cell,)


def _existence(rng, n_objects, answer=None):
    yes = (answer == "yes") if answer is not None else bool(rng.random() < 0.5)
    colour, shape = _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES)
    n = _n(rng, n_objects, 3)
    specs: list[tuple[int | None, str, str]] = []
    if yes:
        specs.append((None, colour, shape))
    near = (not yes) or rng.random() < 0.75
    if near:  # a <colour> non-<shape> and a non-<colour> <shape>
        specs.append((None, colour, _pick(rng, SHAPES, [shape])))
        specs.append((None, _pick(rng, COLOUR_NAMES, [colour]), shape))
    while len(specs) < n:
        c, s = _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES)
        if c == colour and s == shape:
            continue
        specs.append((None, c, s))
    scene = _build(rng, specs)
    if yes:
        rel = tuple(o.cell for o in scene.objects if o.colour == colour and o.shape == shape)
    else:
        rel = tuple(o.cell for o in scene.objects if o.colour == colour or o.shape == shape)
    return scene, f"is there a {colour} {shape}?", "yes" if yes else "no", rel


def _count(rng, n_objects, answer=None):
    lo, hi = COUNT_RANGE
    k = NUMBER_WORDS.index(answer) if answer is not None else int(rng.integers(lo, hi + 1))
    colour = _pick(rng, COLOUR_NAMES)
    n = _n(rng, n_objects, k + 1)
    specs = [(None, colour, _pick(rng, SHAPES)) for _ in range(k)]
    specs += [(None, _pick(rng, COLOUR_NAMES, [colour]), _pick(rng, SHAPES)) for _ in range(n - k)]
    scene = _build(rng, specs)
    rel = tuple(o.cell for o in scene.objects if o.colour == colour)
    return scene, f"how many {colour} objects are there?", NUMBER_WORDS[k], rel


def _relation(rng, n_objects, answer=None, direction=None):
    direction = direction or list(DIRECTIONS)[int(rng.integers(4))]
    dr, dc = DIRECTIONS[direction]
    colour, shape = _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES)
    ans = answer or _pick(rng, COLOUR_NAMES)
    while True:  # subject cell with the neighbour inside the grid
        r, c = int(rng.integers(GRID)), int(rng.integers(GRID))
        if 0 <= r + dr < GRID and 0 <= c + dc < GRID:
            break
    subj_cell, nb_cell = r * GRID + c, (r + dr) * GRID + (c + dc)
    nb_shape = _pick(rng, SHAPES)
    if ans == colour and nb_shape == shape:  # neighbour must not duplicate the subject
        nb_shape = _pick(rng, SHAPES, [shape])
    specs: list[tuple[int | None, str, str]] = [(subj_cell, colour, shape), (nb_cell, ans, nb_shape)]
    n = _n(rng, n_objects, 3)
    # distractor in another adjacent cell, with a different colour
    if rng.random() < 0.8:
        cand = []
        for d, (ddr, ddc) in DIRECTIONS.items():
            rr, cc = r + ddr, c + ddc
            if d != direction and 0 <= rr < GRID and 0 <= cc < GRID:
                cand.append(rr * GRID + cc)
        cell = cand[int(rng.integers(len(cand)))]
        ds = _pick(rng, SHAPES)
        dcol = _pick(rng, COLOUR_NAMES, [ans] + ([colour] if ds == shape else []))
        specs.append((cell, dcol, ds))
    # near misses for the subject description
    if rng.random() < 0.7:
        specs.append((None, colour, _pick(rng, SHAPES, [shape])))
    if rng.random() < 0.7:
        specs.append((None, _pick(rng, COLOUR_NAMES, [colour]), shape))
    while len(specs) < n:
        cc, ss = _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES)
        if cc == colour and ss == shape:
            continue
        specs.append((None, cc, ss))
    scene = _build(rng, specs)
    return scene, f"what colour is the object {direction} the {colour} {shape}?", ans, (subj_cell, nb_cell)


_GEN = {"attribute": _attribute, "existence": _existence, "count": _count, "relation": _relation}


def _make(rng, kind, n_objects, qid=None, **kw) -> tuple[Scene, ShapesQuestion]:
    scene, q, a, rel = _GEN[kind](rng, n_objects, **kw)
    qid = qid or f"shapes-s{scene.seed}"
    return scene, ShapesQuestion(qid, kind, q, a, tuple(sorted(rel)))


# ----------------------------------------------------------------------------
# public API


def prompt(question: str, order: str = "question-first") -> str:
    """The LLaVA-1.5 style prompt for ``question`` with the question and the image in
    ``order`` (one of PROMPT_ORDERS); the answer follows as ' {answer}' + EOS."""
    return PROMPT_TEMPLATES[order].format(question=question)


def sample(
    rng: np.random.Generator,
    n_objects: tuple[int, int] = (4, 8),
    kinds: Sequence[str] = KINDS,
) -> tuple[Scene, ShapesQuestion]:
    """One random (scene, question); kind uniform over ``kinds``, answer uniform."""
    kind = kinds[int(rng.integers(len(kinds)))]
    return _make(rng, kind, tuple(n_objects))


def _eval_item(i: int) -> tuple[Scene, ShapesQuestion]:
    rng = np.random.default_rng(np.random.SeedSequence(entropy=SEED_ENTROPY, spawn_key=(0, i)))
    kind = KINDS[i % len(KINDS)]
    k = i // len(KINDS)
    qid = f"shapes-{i:05d}"
    if kind == "attribute":
        if k % 2 == 0:
            kw = dict(subtype="colour", answer=COLOUR_NAMES[(k // 2) % len(COLOUR_NAMES)])
        else:
            kw = dict(subtype="shape", answer=SHAPES[(k // 2) % len(SHAPES)])
    elif kind == "existence":
        kw = dict(answer="yes" if k % 2 == 0 else "no")
    elif kind == "count":
        lo, hi = COUNT_RANGE
        kw = dict(answer=NUMBER_WORDS[lo + k % (hi - lo + 1)])
    else:
        kw = dict(answer=COLOUR_NAMES[k % len(COLOUR_NAMES)], direction=list(DIRECTIONS)[(k // len(COLOUR_NAMES)) % 4])
    return _make(rng, kind, (4, 8), qid=qid, **kw)


def eval_split(n: int = EVAL_SIZE) -> list[tuple[Scene, ShapesQuestion]]:
    """Deterministic evaluation split: kinds cycle (balanced), answers cycle
    (balanced within each kind), 4-8 objects, ids ``shapes-00000``..."""
    return [_eval_item(i) for i in range(n)]


def _key(scene: Scene, q: ShapesQuestion) -> tuple:
    return (tuple((o.row, o.col, o.colour, o.shape) for o in scene.objects), q.question)


@lru_cache(maxsize=1)
def eval_keys() -> frozenset:
    """Content keys (objects, question) of the default eval split."""
    return frozenset(_key(s, q) for s, q in eval_split(EVAL_SIZE))


def train_rng(stream: int, index: int) -> np.random.Generator:
    """RNG of training sample block ``index`` of ``stream`` (spawn_key (1, ...))."""
    return np.random.default_rng(np.random.SeedSequence(entropy=SEED_ENTROPY, spawn_key=(1, stream, index)))


def train_batch(
    stream: int,
    index: int,
    batch_size: int,
    n_objects: tuple[int, int] = (4, 8),
    kinds: Sequence[str] = KINDS,
) -> list[tuple[Scene, ShapesQuestion]]:
    """Deterministic training batch ``index`` of ``stream``; never contains an eval item."""
    rng = train_rng(stream, index)
    keys = eval_keys()
    out: list[tuple[Scene, ShapesQuestion]] = []
    while len(out) < batch_size:
        s, q = sample(rng, n_objects, kinds)
        if _key(s, q) not in keys:
            out.append((s, q))
    return out


def train_stream(
    stream: int = 0,
    n_objects: tuple[int, int] = (4, 8),
    kinds: Sequence[str] = KINDS,
    start: int = 0,
) -> Iterator[tuple[Scene, ShapesQuestion]]:
    """Endless training stream (blocks of 64 from ``train_batch``)."""
    index = start
    while True:
        yield from train_batch(stream, index, 64, n_objects, kinds)
        index += 1


def vocabulary() -> list[str]:
    """All words that can appear in prompts / questions / answers."""
    words = [
        "USER",
        ":",
        "ASSISTANT",
        "?",
        "what",
        "colour",
        "is",
        "the",
        "shape",
        "object",
        "there",
        "a",
        "how",
        "many",
        "objects",
        "are",
        "left",
        "right",
        "of",
        "above",
        "below",
        "yes",
        "no",
    ]
    words += list(COLOUR_NAMES) + list(SHAPES) + list(NUMBER_WORDS)
    seen: list[str] = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return seen
