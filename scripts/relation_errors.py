#!/usr/bin/env python
"""Where a reference checkpoint gets ``shapes`` relations wrong: by direction, and what it names.

For every relation question of the evaluation split (300), the unreduced model's
answer (teacher-forced, as ``train_reference.py``'s heldout check computes it), counted
by direction ("left of", "right of", "above", "below") and, when wrong, by what the
predicted colour belongs to: another neighbour of the subject, the subject itself,
another object of the scene, or nothing in it.

    python scripts/relation_errors.py reference/checkpoint [OTHER_CHECKPOINT ...]
"""

from __future__ import annotations

import collections
import sys

import torch
from reference_model import Encoder, S, build_tokenizer, lm_answer_logits, pixels, vision
from transformers import LlavaForConditionalGeneration


def diagnose(path: str, bs: int = 60) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    tok = build_tokenizer()
    enc = Encoder(tok)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    items = [(s, q) for s, q in S.eval_split(S.EVAL_SIZE) if q.kind == "relation"]
    outcome: collections.Counter[str] = collections.Counter()
    by_direction: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    with torch.no_grad():
        for i in range(0, len(items), bs):
            chunk = items[i : i + bs]
            vh, _ = vision(model, pixels([S.render(s) for s, _ in chunk]))
            ids, last, _ = enc.batch([q for _, q in chunk])
            pred = lm_answer_logits(model, ids, last, vh)[:, 0].argmax(-1).tolist()
            for (scene, q), p in zip(chunk, pred):
                said = tok.convert_ids_to_tokens(p)
                subject, neighbour = q.relevant_cells
                direction = q.question.split(" the object ")[1].split(" the ")[0]
                by_direction[direction][0] += said == q.answer
                by_direction[direction][1] += 1
                if said == q.answer:
                    outcome["right"] += 1
                    continue
                sr, sc = divmod(subject, S.GRID)
                others = [o for o in scene.objects if o.cell not in (subject, neighbour)]
                beside = [o for o in others if abs(o.row - sr) + abs(o.col - sc) == 1]
                subject_colour = next(o.colour for o in scene.objects if o.cell == subject)
                if any(o.colour == said for o in beside):
                    outcome["wrong: another neighbour's colour"] += 1
                elif said == subject_colour:
                    outcome["wrong: the subject's colour"] += 1
                elif any(o.colour == said for o in others):
                    outcome["wrong: another object's colour"] += 1
                else:
                    outcome["wrong: nothing in the scene"] += 1
    return dict(outcome), {d: (a, n) for d, (a, n) in by_direction.items()}


def main() -> None:
    torch.set_num_threads(2)
    for path in sys.argv[1:]:
        outcome, by_direction = diagnose(path)
        print(path)
        print("  by direction: " + ", ".join(f"{d} {a}/{n}" for d, (a, n) in sorted(by_direction.items())))
        print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())))


if __name__ == "__main__":
    main()
