#!/usr/bin/env python
"""Train the tokenbench reference LLaVA model on the procedural ``shapes`` task.

A stock ``transformers.LlavaForConditionalGeneration`` (CLIP vision tower 4x128,
patch 12 on 144 px -> 144 patch tokens; Llama 4x192 LM; word-level tokenizer)
is trained from scratch on CPU in three stages:

  A  vision tower + projector: every projected patch token regresses onto the
     sum of the (frozen) LM word embeddings of its colour, shape, row marker
     "<rI>" and column marker "<cJ>" ("<bg>" for empty cells); the [CLS] output
     of the last vision layer (through a throw-away linear head) predicts the
     multi-hot of (colour, shape) pairs present, which focuses the last-layer
     [CLS] attention on object patches.
  B  vision tower frozen; projector + whole LM (incl. word embeddings) trained
     on VQA with answer-only loss (answer word + EOS), plus an auxiliary loss that
     pulls the answer position's attention in heads 2.0, 2.1, 3.0 onto the cells the
     answer depends on.  Curriculum: 2-5 objects, then 3-6, then 4-8.  For
     relations, from step 900 (--relation-order-sup), those heads are pulled onto the
     later of subject and neighbour in token order, and head 1.0 at that cell onto
     the earlier one: under causal attention only the later cell can see the other.
  C  joint fine-tune of everything at a low LR (the [CLS] multi-hot loss is kept as
     an auxiliary loss).  Late in B and throughout C, relations are drawn twice as
     often as each other kind (they train slowest).  In B and C half the samples
     (--drop-frac) of the kinds in --drop-kinds (all but relation) see a pruned
     image: 16-144 of its tokens, the relevant cells always among them, the dropped
     ones masked out of attention with position ids unchanged (what the adapter's
     input-level pruning computes), so that the model answers from the tokens an
     answer needs and not from how many tokens there are.

Seeded and resumable: every training batch is a pure function of (stage, step)
(see ``tasks/shapes/scenes.py: train_batch``), and a checkpoint with model,
optimizer, rng states and (stage, step) is written to --workdir every
--ckpt-every seconds; rerunning the same command resumes exactly.  Results depend
on --threads (CPU reduction order): the documented setting is 2.

--prompt-order sets where the question goes (the training prompts and the chat
template exported with the model, so that the harness prompts the model as it was
trained; stage A does not read a prompt):
  question-first  "USER: {question}\n<image> ASSISTANT:" (the default; the shipped model's first run)
  image-first     "USER: <image>\n{question} ASSISTANT:" (LLaVA's own order, the one
                  text-side pruning methods assume)
  both            "USER: {question}\n<image>\n{question} ASSISTANT:" (the shipped one,
                  by fine-tuning the question-first model: --init-from)
With the image first, every stage-B run before attention supervision, order supervision,
the curriculum and pruned-input batches existed sat at the answer prior, because the
answer position had to learn question-conditioned retrieval over 144 tokens from
scratch; with the question first, each visual token can condition on it and B learns
within a few hundred steps.

Run (two commands from empty --workdir folders; together they are the shipped recipe):
    python scripts/train_reference.py --device cpu --threads 2 --workdir DIR1 --out QF
    python scripts/train_reference.py --device cpu --threads 2 --init-from QF \
        --prompt-order both --contiguous-frac 0.5 --rater-heads 0.0,1.0,2.0 \
        --freeze-inputs --workdir DIR2 --out OUT
The first trains the question-first model (stages A, B, C; about 105 min on 2 cores);
the second fine-tunes it to the "both" order (stage C alone, 600 steps, vision tower,
projector and word embeddings frozen; about 6 min), with one head in each of layers
0-2 supervised to attend, from the question's content words after the image, to the
answer's cells (--rater-heads: the text-to-image attention text-side raters read).
QF's weights are also in git history (git show 9d360db:reference/checkpoint/model.safetensors).

Status (2026-12-02): reference/checkpoint (weights 0f5cf3d57b63abd7) is OUT; rerun on
the same machine: bit-identical weights.  On the 1,200-question split (HF generate):
98.42% (attribute 99.0, existence 99.0, count 95.7, relation 100.0); the shapes oracle
at 16/32/48 of 144 tokens: 96.2/96.8/96.9; [CLS] top-k object recall 0.745.  Without
--rater-heads/--freeze-inputs: 98.50%, but the question after the image attended at
random (sparsevlm 40.4% at 32 tokens); with --rater-heads but without --freeze-inputs:
98.33%, but the word embeddings moved 3x further and sppruner/cdpruner lost 7-10 points.

QF (weights ecca84bb8f6fc8bf, shipped until 2026-12-02): stage A 786 s (rerun from
scratch: bit-identical weights), B 4,240 s, C 1,121 s on 2 CPU cores, resumed from
checkpoints across sessions; stage C rerun from B's end state, interrupted and resumed
once, gave the same weights bit for bit.  On the 1,200-question split: 98.0% (attribute
99.0, existence 98.7, count 94.3, relation 100.0); the oracle at 16/32/48 tokens:
96.8/97.2/97.5 (count 90.0/91.3/92.7).  With --drop-near-frac 0 (same A and B): 98.75%,
but the oracle lost 10 points on count (two objects kept with their nearest cells were
counted as three); its stage C, rerun from B's end state and interrupted and resumed
once, gave bit-identical weights.

Earlier recipes (docs/reference-model/*.log), all from the same stage A:
  --drop-frac 0 --no-relation-order-sup --drop-kinds all --drop-near-frac 0: 85.25%, relation 50.7,
                    and the oracle at 32 tokens scores 44.3% on count.
  --no-relation-order-sup --drop-kinds all --drop-near-frac 0: 83.9%, relation 41.0; the oracle at
                    32 tokens scores 50.3% on relations, above the unreduced model.
Without the order supervision, relations were learned only where the later token
is the subject ("left of" 77/78, "right of" 32/78 for the checkpoint shipped before);
started at step 0 with weight 1, it kept B at the answer prior for 600 steps (its
large early loss took over the clipped gradient), hence --relation-order-from 900.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from reference_eval import HeldOut, check_pipeline, final_eval
from reference_model import (
    N_PAIRS,
    REPO,
    Encoder,
    S,
    build_model,
    build_processor,
    build_tokenizer,
    log,
    pair_multihot,
    patch_targets,
    pixels,
    vision,
    vqa_loss,
)

# relations (subject + neighbour cell) train slowest: late in B and in C they are drawn 2 in 5
RELATION_HEAVY = "attribute,existence,count,relation,relation"


# ----------------------------------------------------------------------------
# schedules


def parse_phases(spec: str):
    """'0:all:2-5;400:attribute,count:4-8' -> [(start, kinds, (lo, hi)), ...]"""
    out = []
    for part in spec.split(";"):
        start, kinds, rng = part.split(":")
        ks = tuple(S.KINDS) if kinds == "all" else tuple(kinds.split(","))
        assert all(k in S.KINDS for k in ks), ks
        lo, hi = (int(x) for x in rng.split("-"))
        out.append((int(start), ks, (lo, hi)))
    return sorted(out)


def kinds_of(spec: str) -> tuple[str, ...] | None:
    """'attribute,count' -> ('attribute', 'count'); '' or 'all' -> None (every kind)."""
    return None if spec in ("", "all") else tuple(spec.split(","))


def phase_at(spec: str, step: int):
    cur = None
    for start, ks, nobj in parse_phases(spec):
        if step >= start:
            cur = (nobj, ks)
    return cur


def lr_at(step, total, peak, warmup, floor=0.05, decay_frac=None):
    """Linear warmup, then cosine to floor*peak.  With decay_frac (warmup-stable-decay),
    the LR stays at peak and the cosine only covers the last decay_frac of the steps,
    so a run can be shortened on resume without an LR jump."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if decay_frac is not None:
        start = int(total * (1 - decay_frac))
        if step < start:
            return peak
        p = (step - start) / max(1, total - start)
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


# ----------------------------------------------------------------------------
# checkpointing


def save_ckpt(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state():
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())


def set_rng_state(st):
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


# ----------------------------------------------------------------------------
# stages


STAGES = ("A", "B", "C")


def drop_gen(stream: int, step: int) -> torch.Generator:
    """The token-drop draws of one training step: a pure function of (stage, step), so a
    resumed run draws the same ones."""
    return torch.Generator().manual_seed(1_000_003 * (stream + 1) + step)


def stage_params(model, head, stage, freeze_vision=False, freeze_inputs=False):
    """The parameters a stage trains (all others frozen): with ``freeze_vision`` (stage B,
    and C after --init-from) the projector and the LM only; ``freeze_inputs`` also keeps
    the projector and the word embeddings (the space in which vision-stage methods
    compare visual tokens with the prompt's words) as they are."""
    m = model.model
    if freeze_vision:
        train = list(m.multi_modal_projector.parameters()) + list(m.language_model.parameters()) + list(model.lm_head.parameters())
        if freeze_inputs:
            fixed = {id(p) for p in list(m.multi_modal_projector.parameters()) + list(model.get_input_embeddings().parameters())}
            train = [p for p in train if id(p) not in fixed]
    elif stage == "A":
        train = list(m.vision_tower.parameters()) + list(m.multi_modal_projector.parameters()) + list(head.parameters())
    else:
        train = list(model.parameters()) + list(head.parameters())
    ids = {id(p) for p in train}
    for p in list(model.parameters()) + list(head.parameters()):
        p.requires_grad_(id(p) in ids)
    return train


def run_stage(stage, args, model, head, enc, tok, heldout, ckpt_path, resume_state, t_start):
    cfg = {
        "A": dict(steps=args.steps_a, lr=args.lr_a, warmup=50, bs=args.batch_size),
        "B": dict(steps=args.steps_b, lr=args.lr_b, warmup=100, bs=args.batch_size_b),
        "C": dict(steps=args.steps_c, lr=args.lr_c, warmup=30, bs=args.batch_size_b),
    }[stage]
    steps = cfg["steps"]
    if steps <= 0:
        return
    frozen_vision = stage == "B" or (stage == "C" and bool(args.init_from))
    params = stage_params(model, head, stage, freeze_vision=frozen_vision, freeze_inputs=args.freeze_inputs)
    # projector + word embeddings move slower than the LM body in stages B/C
    slow_ids = {id(p) for p in list(model.model.multi_modal_projector.parameters()) + list(model.get_input_embeddings().parameters())}
    mult = 1.0 if stage == "A" else args.emb_lr_mult
    groups = [dict(params=[p for p in params if id(p) not in slow_ids], mult=1.0), dict(params=[p for p in params if id(p) in slow_ids], mult=mult)]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg["lr"], weight_decay=0.01, betas=(0.9, 0.98))
    start = 0
    wte0 = None
    if resume_state is not None and resume_state["stage"] == stage and resume_state["opt"] is not None:
        opt.load_state_dict(resume_state["opt"])
        start = resume_state["step"]
        set_rng_state(resume_state["rng"])
        log(f"stage {stage}: resumed at step {start}/{steps}")
    if stage == "A":
        wte0 = model.get_input_embeddings().weight.detach().clone()
    vocab = tok.get_vocab()
    stream = STAGES.index(stage)

    def _heads(spec):
        return [tuple(int(x) for x in p.split(".")) for p in spec.split(",")] if spec else []

    att_heads = (_heads(args.att_heads), _heads(args.att_q_heads))
    key_ids = torch.tensor([vocab[w] for w in list(S.COLOUR_NAMES) + list(S.SHAPES) + ["left", "right", "above", "below"]])
    local_heads = _heads(args.relation_local_heads) if args.relation_order_sup else []
    rater_heads = _heads(args.rater_heads) if args.rater_w > 0 else []
    drop_kinds = kinds_of(args.drop_kinds)
    if ((att_heads[0] or att_heads[1] or local_heads) and args.att_sup > 0) or rater_heads:
        model.model.language_model.set_attn_implementation("eager")  # to get attention probabilities

    def answer_loss(vh, qs, scenes_, step):
        ids, last, ans = enc.batch(qs)
        gen = drop_gen(stream, step)
        keep = enc.keep_mask(
            qs,
            args.drop_frac,
            gen,
            scenes=scenes_ if args.drop_keep_adjacent else None,
            kinds=drop_kinds,
            near_frac=args.drop_near_frac if stage == "C" else 0.0,
        )
        # the token-order supervision starts once the model reads the image at all: from
        # the start, its large early loss took over the clipped gradient and stage B sat
        # at the answer prior for 600+ steps
        order = bool(local_heads) and (stage == "C" or step >= args.relation_order_from)
        rel = enc.relevance(qs, relation_later_cell=order)
        local = (local_heads, enc.relation_pairs(qs)) if order else None
        qmask = enc.question_mask(qs, ids.shape[1]) if att_heads[1] else None
        raters = (rater_heads, enc.after_image_mask(qs, ids.shape[1], key_ids), enc.relevance(qs), args.rater_w) if rater_heads else None
        contiguous = None
        if keep is not None and args.contiguous_frac > 0:  # drawn after keep_mask: frac 0 leaves the old draws unchanged
            contiguous = torch.rand(len(qs), generator=gen) < args.contiguous_frac
        return vqa_loss(
            model,
            ids,
            last,
            ans,
            enc.eos,
            vh,
            rel,
            att_heads,
            args.att_sup,
            key_ids,
            keep=keep,
            local=local,
            local_w=args.relation_local_w,
            question_mask=qmask,
            contiguous=contiguous,
            raters=raters,
        )

    last_ckpt = time.time()
    t0 = time.time()
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    model.train()

    def checkpoint(step_done):
        save_ckpt(
            ckpt_path,
            dict(stage=stage, step=step_done, model=model.state_dict(), head=head.state_dict(), opt=opt.state_dict(), rng=rng_state(), args=vars(args)),
        )

    for step in range(start, steps):
        lr = lr_at(step, steps, cfg["lr"], cfg["warmup"], decay_frac=None if stage == "A" else args.decay_frac)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        kinds = S.KINDS
        if stage == "A":
            nobj = (1, 12)
        elif stage == "B":
            nobj, kinds = phase_at(args.phases_b, step)
        else:
            nobj, kinds = (4, 8), tuple(args.kinds_c.split(","))
        batch = S.train_batch(stream, step, cfg["bs"], n_objects=nobj, kinds=kinds)
        scenes_ = [s for s, _ in batch]
        pix = pixels([S.render(s) for s in scenes_])
        if stage == "A":
            vh, pooled = vision(model, pix)
            pred = model.model.multi_modal_projector(vh[:, 1:])
            tgt = patch_targets(scenes_, wte0, vocab)
            mse = F.mse_loss(pred, tgt) / tgt.pow(2).mean()
            bce = F.binary_cross_entropy_with_logits(head(pooled), pair_multihot(scenes_))
            loss = mse + bce
            acc = bce.detach()
        else:
            if frozen_vision:
                with torch.no_grad():
                    vh, _ = vision(model, pix)
            else:
                vh, pooled = vision(model, pix)
            loss, acc = answer_loss(vh, [q for _, q in batch], scenes_, step)
            if not frozen_vision:
                bce = F.binary_cross_entropy_with_logits(head(pooled), pair_multihot(scenes_))
                loss = loss + args.cls_aux * bce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run_loss += loss.item()
        run_acc += acc.item()
        run_n += 1
        done = step + 1
        if done % args.log_every == 0 or done == steps:
            sps = (time.time() - t0) / (done - start)
            what = "bce" if stage == "A" else "train_acc"
            log(
                f"stage {stage} step {done}/{steps} loss {run_loss / run_n:.4f} {what} {run_acc / run_n:.3f} "
                f"lr {lr:.2e} {sps:.2f}s/step elapsed {time.time() - t_start:.0f}s"
            )
            run_loss, run_acc, run_n = 0.0, 0.0, 0
        if done % args.eval_every == 0 or done == steps:
            if stage == "A":
                log(f"stage A vision decode {json.dumps(heldout.vision_decode(model, wte0, vocab))}")
            else:
                res = heldout.accuracy(model)
                log(
                    f"stage {stage} heldout acc "
                    + " ".join(f"{k}={v:.3f}" for k, v in res.items())
                    + " | residual norm at answer pos per layer "
                    + " ".join(f"{x:.1f}" for x in heldout.residual_norms(model))
                )
                res = heldout.accuracy(model, budget=32)
                log(f"stage {stage} heldout acc @32 tokens (relevant + random) " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
                if args.contiguous_frac > 0:
                    res = heldout.accuracy(model, budget=32, contiguous=True)
                    log(f"stage {stage} heldout acc @32 tokens, contiguous positions " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
        if time.time() - last_ckpt > args.ckpt_every and done < steps:
            checkpoint(done)
            last_ckpt = time.time()
    # mark stage complete (and keep a copy of the end-of-stage state)
    nxt = STAGES[STAGES.index(stage) + 1] if stage != "C" else "done"
    end_state = dict(stage=nxt, step=0, model=model.state_dict(), head=head.state_dict(), opt=None, rng=rng_state(), args=vars(args))
    save_ckpt(ckpt_path, end_state)
    save_ckpt(ckpt_path.parent / f"stage{stage}_done.pt", end_state)
    log(f"stage {stage} finished in {time.time() - t0:.0f}s")


# flags that do not change the weights
_NOT_RECIPE = {"out", "workdir", "resume", "log_every", "eval_every", "heldout", "ckpt_every", "n_eval", "fp16"}


# recipe flags added later, with the value every checkpoint saved before them was trained with
_ADDED_FLAGS = {"prompt_order": "question-first", "init_from": "", "contiguous_frac": 0.0, "rater_heads": "", "rater_w": 1.0, "freeze_inputs": False}


def flags_changed(saved: dict, now: dict) -> list[str]:
    """'--flag: checkpoint X, now Y' for every recipe flag whose value differs."""
    saved = {**_ADDED_FLAGS, **saved}
    return [
        f"--{k.replace('_', '-')}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in sorted(now) if k not in _NOT_RECIPE and k in saved and saved[k] != now[k]
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "reference" / "checkpoint"))
    ap.add_argument("--workdir", default="runs/train-reference", help="checkpoints and logs (resumed from if present)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--prompt-order",
        default="question-first",
        choices=list(S.PROMPT_ORDERS),
        help="where the question goes relative to the image, in the training prompts and in the chat template exported with the model",
    )
    ap.add_argument(
        "--init-from",
        default="",
        help="an exported checkpoint folder (model.safetensors) to start from: stages A and B are skipped and "
        "stage C fine-tunes it with the vision tower frozen (so its [CLS] attention is unchanged), "
        "for example to move a trained model to another --prompt-order",
    )
    ap.add_argument(
        "--contiguous-frac",
        type=float,
        default=0.0,
        help="stages B/C: share of the pruned samples whose kept tokens get contiguous position ids (the other position policy) instead of their original ones",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps-a", type=int, default=480)
    ap.add_argument("--steps-b", type=int, default=2800)
    ap.add_argument("--steps-c", type=int, default=600)
    ap.add_argument("--lr-a", type=float, default=1.5e-3)
    ap.add_argument("--lr-b", type=float, default=5e-4)
    ap.add_argument("--emb-lr-mult", type=float, default=0.3, help="LR multiplier of projector + word embeddings in B/C")
    ap.add_argument("--lr-c", type=float, default=1e-4)
    ap.add_argument("--decay-frac", type=float, default=0.25, help="stages B/C: warmup-stable-decay, cosine over the last fraction")
    ap.add_argument("--batch-size-b", type=int, default=32, help="batch size of stages B and C")
    ap.add_argument(
        "--phases-b",
        default="0:all:2-5;900:all:3-6;1500:all:4-8;2000:" + RELATION_HEAVY + ":4-8",
        help="stage-B data curriculum 'start_step:kinds:min-max_objects;...' (kinds: all or comma list)",
    )
    ap.add_argument("--att-sup", type=float, default=1.0, help="weight of the stage B/C auxiliary attention-supervision loss (0 = off)")
    ap.add_argument("--att-heads", default="2.0,2.1,3.0", help="layer.head pairs supervised to attend to relevant cells")
    ap.add_argument(
        "--rater-heads",
        default="",
        help="layer.head pairs supervised to attend, from the question's content words after the image, to the relevant cells (what text-side raters read; needs --prompt-order both or image-first)",
    )
    ap.add_argument("--rater-w", type=float, default=1.0, help="weight of the --rater-heads loss")
    ap.add_argument(
        "--freeze-inputs",
        action="store_true",
        help="with --init-from: also freeze the projector and the word embeddings (so that prompt-to-image similarities stay as the initial model has them)",
    )
    ap.add_argument("--att-q-heads", default="", help="layer.head pairs supervised to attend (from the answer position) to the question's content words")
    ap.add_argument("--kinds-c", default=RELATION_HEAVY, help="stage-C question kinds, comma list; a kind listed twice is drawn twice as often")
    ap.add_argument(
        "--drop-frac",
        type=float,
        default=0.5,
        help="stages B/C: share of samples whose image tokens are pruned at random to 16-144, "
        "relevant cells always kept (so the model answers from what the answer needs)",
    )
    ap.add_argument(
        "--drop-keep-adjacent",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pruned samples also keep the objects next to a relevant cell (the relation's distractor)",
    )
    ap.add_argument(
        "--drop-kinds",
        default="attribute,existence,count",
        help="stages B/C: prune only questions of these kinds (comma list, or 'all'); relations are "
        "not pruned by default: pruned, the model learned to look past the subject's neighbour",
    )
    ap.add_argument(
        "--drop-near-frac",
        type=float,
        default=0.5,
        help="stage C: share of pruned samples that keep the cells nearest their relevant ones (as the shapes oracle does) instead of random others",
    )
    ap.add_argument(
        "--relation-order-sup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="relations: supervise the answer heads onto the later of subject and neighbour in token "
        "order, and --relation-local-heads at that cell onto the earlier one",
    )
    ap.add_argument("--relation-local-heads", default="1.0", help="layer.head pairs that --relation-order-sup supervises between the relation's two cells")
    ap.add_argument("--relation-order-from", type=int, default=900, help="stage-B step where --relation-order-sup starts")
    ap.add_argument("--relation-local-w", type=float, default=0.3, help="weight of the --relation-local-heads loss")
    ap.add_argument("--cls-aux", type=float, default=0.5)
    ap.add_argument("--heldout", type=int, default=240)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--ckpt-every", type=float, default=150.0, help="seconds")
    ap.add_argument("--n-eval", type=int, default=S.EVAL_SIZE)
    ap.add_argument("--fp16", action="store_true", help="save weights in float16")
    args = ap.parse_args()
    for flag, spec in (("--kinds-c", args.kinds_c), ("--drop-kinds", args.drop_kinds)):
        unknown = sorted(set(kinds_of(spec) or ()) - set(S.KINDS))
        if unknown:  # fail before an hour of stages A and B, not at the start of C
            ap.error(f"{flag}: unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(S.KINDS)}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if args.device == "cuda":
        raise SystemExit("this script trains on CPU (the stock model is tiny); --device cuda is not implemented")
    t_start = time.time()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / "train_state.pt"
    out = Path(args.out)

    tok = build_tokenizer()
    enc = Encoder(tok, args.prompt_order)
    model = build_model(tok)
    head = torch.nn.Linear(model.config.vision_config.hidden_size, N_PAIRS)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model params {n_params / 1e6:.2f}M vocab {len(tok)}")

    state = None
    if args.init_from:
        try:  # through from_pretrained: the saved file uses transformers' own key names
            model.load_state_dict(type(model).from_pretrained(args.init_from).state_dict())
        except (OSError, RuntimeError) as e:
            raise SystemExit(f"--init-from {args.init_from}: not a checkpoint of this architecture ({str(e).splitlines()[0]})") from None
        log(f"initialised from {args.init_from}: stages A and B skipped, stage C with the vision tower frozen")
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        log(f"resuming from {ckpt_path}: stage {state['stage']} step {state['step']}")
        changed = flags_changed(state.get("args", {}), vars(args))
        if changed:  # allowed (a stage may start from another run's end state), never silent
            log("WARNING: resuming with flags that differ from the checkpoint's: " + "; ".join(changed))
    heldout = HeldOut(enc, args.heldout)

    cur = state["stage"] if state is not None else ("C" if args.init_from else "A")
    for st in STAGES:
        if cur == "done" or STAGES.index(st) < STAGES.index(cur):
            continue
        run_stage(st, args, model, head, enc, tok, heldout, ckpt_path, state if (state is not None and state["stage"] == st) else None, t_start)
        state = None

    # export
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.eval()
    model.model.language_model.set_attn_implementation("sdpa")
    if args.fp16:
        model.half()
    model.save_pretrained(out, safe_serialization=True)
    build_processor(tok, args.prompt_order).save_pretrained(out)
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    log(f"saved {out} ({size_mb:.1f} MB)")
    check_pipeline(out, enc)
    res, sizes, cov, wrong = final_eval(out, args.n_eval, order=args.prompt_order)
    log(f"FINAL eval (HF generate, n={sum(sizes.values())}, per kind {sizes}): " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))
    log(f"[CLS]-attention object coverage (last vision layer): {cov}")
    for w in wrong:
        log(f"  wrong: {w}")
    (workdir / "final_eval.json").write_text(
        json.dumps(dict(accuracy=res, sizes=sizes, cls_coverage=cov, size_mb=size_mb, elapsed_s=time.time() - t_start), indent=2)
    )


if __name__ == "__main__":
    main()
