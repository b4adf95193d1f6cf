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
     answer depends on.  Curriculum: 2-5 objects, then 3-6, then 4-8.
  C  joint fine-tune of everything at a low LR (the [CLS] multi-hot loss is kept as
     an auxiliary loss).  Late in B and throughout C, relations are drawn twice as
     often as each other kind (they train slowest).

Seeded and resumable: every training batch is a pure function of (stage, step)
(see ``tasks/shapes/scenes.py: train_batch``), and a checkpoint with model,
optimizer, rng states and (stage, step) is written to --workdir every
--ckpt-every seconds; rerunning the same command resumes exactly.  Results depend
on --threads (CPU reduction order): the documented setting is 2.

The prompt puts the question before the image ("USER: {question}\n<image>
ASSISTANT:", the processor's chat template): with the image first, every stage-B run
sat at the answer prior, because the answer position had to learn
question-conditioned retrieval over 144 tokens from scratch; with the question first,
each visual token can condition on it and B learns within a few hundred steps.

Run (from an empty --workdir):
    python scripts/train_reference.py --device cpu --threads 2 --workdir DIR

Status (2026-12-01): this command does NOT reproduce the shipped checkpoint
(reference/checkpoint), which took a less direct path with an earlier version of
this script (stage A shortened from 700 to 480 steps at step 374, its projector
refitted for 200 steps after stage-B checkpoints overwrote it, then stage B with
2,200 and C with 300 steps, every kind drawn equally).  A clean run of the current
defaults, once from scratch on 2 CPU cores (A 786 s, B 3538 s, C 952 s, 89 min in
all with other jobs sharing the cores part of the time; docs/reference-model/train.log),
reached 85.25% on the 1,200-question split (attribute 98.3, existence 98.7, count
93.3, relation 50.7; [CLS] top-k object recall 75%) and was not shipped: its counting
depends on tokens the answer does not need (the shapes oracle keeping 32 of 144
tokens scores 44.3% on count against 93.3% unreduced), so every pruning strategy
would be charged for a model artefact.  README.md has the comparison.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _load_scenes():
    try:
        from tasks.shapes import scenes  # type: ignore

        return scenes
    except Exception:
        spec = importlib.util.spec_from_file_location("tokenbench_shapes_scenes", REPO / "tasks/shapes/scenes.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


S = _load_scenes()

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
MARKERS = ["<bg>"] + [f"<r{i}>" for i in range(S.GRID)] + [f"<c{i}>" for i in range(S.GRID)]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n' }}"  # an expression: chat templates trim the newline after a block tag
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% endif %}"
    "{% elif message['role'] == 'assistant' %} ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
N_PAIRS = len(S.COLOUR_NAMES) * len(S.SHAPES)
# relations (subject + neighbour cell) train slowest: late in B and in C they are drawn 2 in 5
RELATION_HEAVY = "attribute,existence,count,relation,relation"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------
# tokenizer / processor / model


def build_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + S.vocabulary() + MARKERS
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.add_special_tokens(SPECIALS + MARKERS)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=512,
    )
    return tok


def build_processor(tok):
    from transformers import CLIPImageProcessor, LlavaProcessor

    ip = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": S.IMAGE_SIZE},
        resample=3,
        do_center_crop=True,
        crop_size={"height": S.IMAGE_SIZE, "width": S.IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=S.CELL,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(
        image_size=S.IMAGE_SIZE, patch_size=S.CELL, hidden_size=128, intermediate_size=512,
        num_hidden_layers=4, num_attention_heads=4, projection_dim=128,
    )
    tc = LlamaConfig(
        hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, vocab_size=len(tok),
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=S.GRID * S.GRID, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = 4
    return model


# ----------------------------------------------------------------------------
# data


def pixels(images) -> torch.Tensor:
    """Same as the CLIPImageProcessor path for 144x144 RGB inputs (verified in check_pipeline)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    arr = (arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Encoder:
    """Token ids of (prompt [+ answer + EOS]) with <image> expanded to 144 tokens."""

    def __init__(self, tok):
        self.tok = tok
        self.image_id = tok.convert_tokens_to_ids("<image>")
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id
        self.cache: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        ids = self.cache.get(question)
        if ids is None:
            raw = self.tok(S.prompt(question))["input_ids"]
            ids = []
            for t in raw:
                ids.extend([t] * (S.GRID * S.GRID) if t == self.image_id else [t])
            self.cache[question] = ids
        return ids

    def answer_id(self, answer: str) -> int:
        return self.tok.convert_tokens_to_ids(answer)

    def relevance(self, qs) -> torch.Tensor:
        """(B, 144) 0/1 mask of the relevant cells of each question."""
        r = torch.zeros(len(qs), S.GRID * S.GRID)
        for i, q in enumerate(qs):
            r[i, list(q.relevant_cells)] = 1
        return r

    def keep_mask(self, qs, frac: float, gen: torch.Generator, lo: int = 16, hi: int | None = None):
        """(B, 144) bool: which image tokens each sample keeps.  A share ``frac`` of the
        samples keeps only k ~ U{lo..hi} tokens (hi defaults to 144): its relevant cells,
        then random others (what a pruning strategy leaves); the rest keep all 144.
        None when frac is 0."""
        n = S.GRID * S.GRID
        hi = n if hi is None else hi
        if frac <= 0:
            return None
        keep = torch.ones(len(qs), n, dtype=torch.bool)
        drop = torch.rand(len(qs), generator=gen) < frac
        for i, q in enumerate(qs):
            if not drop[i]:
                continue
            k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            score = torch.rand(n, generator=gen)
            score[list(q.relevant_cells)] = 2.0  # relevant cells first
            keep[i] = False
            keep[i, score.topk(max(k, len(q.relevant_cells))).indices] = True
        return keep

    def batch(self, qs):
        """Right-padded ids (B, L), index of last prompt token (B,), answer ids (B,)."""
        seqs, last, ans = [], [], []
        for q in qs:
            p = self.prompt_ids(q.question)
            a = self.answer_id(q.answer)
            seqs.append(p + [a, self.eos])
            last.append(len(p) - 1)
            ans.append(a)
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, torch.tensor(last), torch.tensor(ans)


def patch_targets(scenes_, wte: torch.Tensor, ids: dict[str, int]) -> torch.Tensor:
    """(B, 144, D) regression targets for stage A."""
    B = len(scenes_)
    G = S.GRID
    rows = torch.tensor([ids[f"<r{i // G}>"] for i in range(G * G)])
    cols = torch.tensor([ids[f"<c{i % G}>"] for i in range(G * G)])
    base = wte[rows] + wte[cols]  # (144, D)
    a = torch.full((B, G * G), ids["<bg>"], dtype=torch.long)
    b = torch.full((B, G * G), -1, dtype=torch.long)
    for i, sc in enumerate(scenes_):
        for o in sc.objects:
            a[i, o.cell] = ids[o.colour]
            b[i, o.cell] = ids[o.shape]
    t = wte[a] + base
    t = t + torch.where((b >= 0)[..., None], wte[b.clamp(min=0)], torch.zeros(()))
    return t


def pair_multihot(scenes_) -> torch.Tensor:
    y = torch.zeros(len(scenes_), N_PAIRS)
    for i, sc in enumerate(scenes_):
        for o in sc.objects:
            y[i, S.COLOUR_NAMES.index(o.colour) * len(S.SHAPES) + S.SHAPES.index(o.shape)] = 1
    return y


# ----------------------------------------------------------------------------
# model pieces


def vision(model, pix):
    out = model.model.vision_tower(pix, output_hidden_states=True, return_dict=True)
    return out.hidden_states[-1], out.pooler_output  # (B,145,128), (B,128)


def lm_answer_logits(model, ids, last, vis_hidden, att_heads=None, keep=None):
    """Logits at the answer position and at the EOS position: (B, 2, V).
    With att_heads [(layer, head), ...] also returns those heads' attention from the
    answer position onto the 144 image tokens: (B, n_heads, 144).
    keep (B, 144) bool masks the dropped image tokens out of every attention, with the
    position ids left as they are: the same computation as the adapter's input-level
    pruning (which removes them and keeps the survivors' original position ids)."""
    m = model.model
    emb = m.get_input_embeddings()(ids)
    feats = m.multi_modal_projector(vis_hidden[:, 1:])
    img = ids == model.config.image_token_index
    emb = emb.masked_scatter(img[..., None], feats.to(emb.dtype))
    attention_mask = None
    if keep is not None:
        attention_mask = torch.ones(ids.shape, dtype=torch.long)
        attention_mask[img] = keep.reshape(-1).long()
    # right padding + causal attention: padded tail never influences real tokens
    o = m.language_model(inputs_embeds=emb, attention_mask=attention_mask, use_cache=False,
                         output_attentions=bool(att_heads))
    h = o.last_hidden_state
    idx = torch.stack([last, last + 1], 1)  # (B,2)
    hs = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
    logits = model.lm_head(hs)
    if not att_heads:
        return logits
    B = ids.shape[0]
    rows = [o.attentions[layer][torch.arange(B), head, last] for layer, head in att_heads]  # (B, L) each
    return logits, torch.stack(rows, 1)  # (B, n_heads, L)


def vqa_loss(model, ids, last, ans, eos, vis_hidden, rel=None, att_heads=None, att_w=0.0, key_ids=None, keep=None):
    """Answer(+EOS) cross-entropy; optionally plus att_w * attention supervision:
    -log(attention mass on the relevant cells) for the given (layer, head)s at the
    answer position (a training-only auxiliary loss; the model stays stock).
    att_heads: (cell_heads, question_heads): cell heads are pushed onto the relevant image
    cells, question heads onto the question's words (this breaks the chicken-and-egg
    plateau where the answer position neither knows the question nor looks at the image)."""
    cell_heads, q_heads = att_heads if att_heads else ([], [])
    heads = list(cell_heads) + list(q_heads)
    if heads and att_w > 0:
        logits, att = lm_answer_logits(model, ids, last, vis_hidden, heads, keep=keep)
    else:
        logits, att = lm_answer_logits(model, ids, last, vis_hidden, keep=keep), None
    tgt = torch.stack([ans, torch.full_like(ans, eos)], 1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    if att is not None:
        B, L = ids.shape
        img = ids == model.config.image_token_index
        target = torch.zeros(B, L)
        target[img] = rel.reshape(-1)
        nc = len(cell_heads)
        masses = [(att[:, :nc] * target[:, None]).sum(-1)]
        if q_heads:
            pos = torch.arange(L)[None]
            img_end = (img * pos).max(1).values  # last image position
            qmask = (pos > img_end[:, None]) & (pos < (last - 1)[:, None])  # question words
            if key_ids is not None:  # only its content words (colours, shapes, directions)
                qmask = qmask & torch.isin(ids, key_ids)
            qmask = qmask.float()
            masses.append((att[:, nc:] * qmask[:, None]).sum(-1))
        mass = torch.cat(masses, 1)
        loss = loss + att_w * (-torch.log(mass + 1e-4)).mean()
    acc = (logits[:, 0].argmax(-1) == ans).float().mean()
    return loss, acc


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
# evaluation helpers


class HeldOut:
    """A slice of the eval split with cached pixels (fast teacher-forced check)."""

    def __init__(self, enc, n):
        items = S.eval_split(n)
        self.scenes = [s for s, _ in items]
        self.qs = [q for _, q in items]
        self.pix = pixels([S.render(s) for s in self.scenes])
        self.enc = enc

    @torch.no_grad()
    def accuracy(self, model, bs=100, budget=None):
        """Teacher-forced accuracy by kind; with ``budget``, each sample keeps only its
        relevant cells plus random others up to ``budget`` image tokens (a check that
        pruning to what the answer needs costs nothing)."""
        model.eval()
        hits = {}
        gen = torch.Generator().manual_seed(1234)
        for i in range(0, len(self.qs), bs):
            qs = self.qs[i: i + bs]
            vh, _ = vision(model, self.pix[i: i + bs])
            ids, last, ans = self.enc.batch(qs)
            keep = None if budget is None else self.enc.keep_mask(qs, 1.0, gen, lo=budget, hi=budget)
            pred = lm_answer_logits(model, ids, last, vh, keep=keep)[:, 0].argmax(-1)
            for q, p, a in zip(qs, pred.tolist(), ans.tolist()):
                hits.setdefault(q.kind, []).append(p == a)
        model.train()
        res = {k: float(np.mean(v)) for k, v in hits.items()}
        res["overall"] = float(np.mean([x for v in hits.values() for x in v]))
        return res

    @torch.no_grad()
    def residual_norms(self, model, n=32):
        """Mean residual-stream norm at the answer position after each LM layer (watch for blow-ups)."""
        m = model.model
        vh, _ = vision(model, self.pix[:n])
        ids, last, _ = self.enc.batch(self.qs[:n])
        emb = m.get_input_embeddings()(ids)
        emb = emb.masked_scatter((ids == model.config.image_token_index)[..., None], m.multi_modal_projector(vh[:, 1:]))
        o = m.language_model(inputs_embeds=emb, use_cache=False, output_hidden_states=True)
        return [float(h[torch.arange(len(last)), last].norm(dim=-1).mean()) for h in o.hidden_states]

    @torch.no_grad()
    def vision_decode(self, model, wte, ids):
        """Nearest-word decoding of projected patch tokens (stage A check)."""
        model.eval()
        vh, _ = vision(model, self.pix)
        p = model.model.multi_modal_projector(vh[:, 1:])  # (N,144,D)
        G = S.GRID
        rows = torch.tensor([ids[f"<r{i // G}>"] for i in range(G * G)])
        cols = torch.tensor([ids[f"<c{i % G}>"] for i in range(G * G)])
        content = p - wte[rows] - wte[cols]
        cands, labels = [wte[ids["<bg>"]]], [("bg", "bg")]
        for c in S.COLOUR_NAMES:
            for s in S.SHAPES:
                cands.append(wte[ids[c]] + wte[ids[s]])
                labels.append((c, s))
        cands = torch.stack(cands)
        d = torch.cdist(content.reshape(-1, content.shape[-1]), cands).reshape(len(self.scenes), G * G, -1)
        pred = d.argmin(-1)
        rowpred = (p @ wte[torch.tensor([ids[f"<r{i}>"] for i in range(G)])].T).argmax(-1)
        colpred = (p @ wte[torch.tensor([ids[f"<c{i}>"] for i in range(G)])].T).argmax(-1)
        col_ok = shp_ok = n_obj = bg_ok = n_bg = pos_ok = 0
        for i, sc in enumerate(self.scenes):
            occ = {o.cell: o for o in sc.objects}
            for cell in range(G * G):
                lab = labels[pred[i, cell]]
                pos_ok += int(rowpred[i, cell] == cell // G and colpred[i, cell] == cell % G)
                if cell in occ:
                    n_obj += 1
                    col_ok += lab[0] == occ[cell].colour
                    shp_ok += lab[1] == occ[cell].shape
                else:
                    n_bg += 1
                    bg_ok += lab[0] == "bg"
        model.train()
        return dict(colour=col_ok / n_obj, shape=shp_ok / n_obj, background=bg_ok / n_bg,
                    position=pos_ok / (len(self.scenes) * G * G))


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


def stage_params(model, head, stage):
    m = model.model
    if stage == "A":
        train = list(m.vision_tower.parameters()) + list(m.multi_modal_projector.parameters()) + list(head.parameters())
    elif stage == "B":
        train = list(m.multi_modal_projector.parameters()) + list(m.language_model.parameters()) + list(model.lm_head.parameters())
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
    params = stage_params(model, head, stage)
    # projector + word embeddings move slower than the LM body in stages B/C
    slow_ids = {id(p) for p in list(model.model.multi_modal_projector.parameters())
                + list(model.get_input_embeddings().parameters())}
    mult = 1.0 if stage == "A" else args.emb_lr_mult
    groups = [dict(params=[p for p in params if id(p) not in slow_ids], mult=1.0),
              dict(params=[p for p in params if id(p) in slow_ids], mult=mult)]
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
    if (att_heads[0] or att_heads[1]) and args.att_sup > 0:
        model.model.language_model.set_attn_implementation("eager")  # to get attention probabilities
    last_ckpt = time.time()
    t0 = time.time()
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    model.train()

    def checkpoint(step_done):
        save_ckpt(ckpt_path, dict(stage=stage, step=step_done, model=model.state_dict(), head=head.state_dict(),
                                  opt=opt.state_dict(), rng=rng_state(), args=vars(args)))

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
        elif stage == "B":
            with torch.no_grad():
                vh, _ = vision(model, pix)
            qs = [q for _, q in batch]
            ids, last, ans = enc.batch(qs)
            keep = enc.keep_mask(qs, args.drop_frac, drop_gen(stream, step))
            loss, acc = vqa_loss(model, ids, last, ans, enc.eos, vh, enc.relevance(qs), att_heads, args.att_sup, key_ids,
                                 keep=keep)
        else:
            vh, pooled = vision(model, pix)
            qs = [q for _, q in batch]
            ids, last, ans = enc.batch(qs)
            keep = enc.keep_mask(qs, args.drop_frac, drop_gen(stream, step))
            loss, acc = vqa_loss(model, ids, last, ans, enc.eos, vh, enc.relevance(qs), att_heads, args.att_sup, key_ids,
                                 keep=keep)
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
            log(f"stage {stage} step {done}/{steps} loss {run_loss / run_n:.4f} {what} {run_acc / run_n:.3f} "
                f"lr {lr:.2e} {sps:.2f}s/step elapsed {time.time() - t_start:.0f}s")
            run_loss, run_acc, run_n = 0.0, 0.0, 0
        if done % args.eval_every == 0 or done == steps:
            if stage == "A":
                log(f"stage A vision decode {json.dumps(heldout.vision_decode(model, wte0, vocab))}")
            else:
                res = heldout.accuracy(model)
                log(f"stage {stage} heldout acc " + " ".join(f"{k}={v:.3f}" for k, v in res.items())
                    + " | residual norm at answer pos per layer " + " ".join(f"{x:.1f}" for x in heldout.residual_norms(model)))
                res = heldout.accuracy(model, budget=32)
                log(f"stage {stage} heldout acc @32 tokens (relevant + random) " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
        if time.time() - last_ckpt > args.ckpt_every and done < steps:
            checkpoint(done)
            last_ckpt = time.time()
    # mark stage complete (and keep a copy of the end-of-stage state)
    nxt = STAGES[STAGES.index(stage) + 1] if stage != "C" else "done"
    end_state = dict(stage=nxt, step=0, model=model.state_dict(), head=head.state_dict(), opt=None,
                     rng=rng_state(), args=vars(args))
    save_ckpt(ckpt_path, end_state)
    save_ckpt(ckpt_path.parent / f"stage{stage}_done.pt", end_state)
    log(f"stage {stage} finished in {time.time() - t0:.0f}s")


# ----------------------------------------------------------------------------
# final export + evaluation via the standard HF path


@torch.no_grad()
def final_eval(out_dir: Path, n_eval: int, bs: int = 60):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(out_dir)
    model = LlavaForConditionalGeneration.from_pretrained(out_dir, attn_implementation="eager").eval()
    items = S.eval_split(n_eval)
    hits: dict[str, list[bool]] = {}
    wrong = []
    for i in range(0, len(items), bs):
        chunk = items[i: i + bs]
        texts = [proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}],
            add_generation_prompt=True) for _, q in chunk]
        assert texts[0] == S.prompt(chunk[0][1].question), texts[0]
        inputs = proc(images=[S.render(s) for s, _ in chunk], text=texts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        dec = proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for (s, q), d in zip(chunk, dec):
            ok = d.strip() == q.answer
            hits.setdefault(q.kind, []).append(ok)
            if not ok and len(wrong) < 12:
                wrong.append((q.id, q.question, q.answer, d.strip()))
    res = {k: float(np.mean(v)) for k, v in hits.items()}
    res["overall"] = float(np.mean([x for v in hits.values() for x in v]))
    sizes = {k: len(v) for k, v in hits.items()}
    # [CLS]-attention object coverage in the last vision layer
    cov_k, cov_2k, n_obj = 0, 0, 0
    for i in range(0, len(items), bs):
        chunk = items[i: i + bs]
        pix = proc.image_processor([S.render(s) for s, _ in chunk], return_tensors="pt")["pixel_values"]
        att = model.model.vision_tower(pix, output_attentions=True).attentions[-1]  # (B,H,145,145)
        cls = att[:, :, 0, 1:].mean(1)  # (B,144)
        for (s, _), a in zip(chunk, cls):
            cells = {o.cell for o in s.objects}
            k = len(cells)
            order = a.argsort(descending=True).tolist()
            cov_k += len(cells & set(order[:k]))
            cov_2k += len(cells & set(order[: 2 * k]))
            n_obj += k
    coverage = dict(topk_recall=cov_k / n_obj, top2k_recall=cov_2k / n_obj)
    return res, sizes, coverage, wrong


def check_pipeline(out_dir: Path, enc):
    """Processor output == training-time ids/pixels for one example."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(out_dir)
    s, q = S.eval_split(1)[0]
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}],
        add_generation_prompt=True)
    assert text == S.prompt(q.question), repr(text)
    inp = proc(images=[S.render(s)], text=[text], return_tensors="pt")
    assert inp["input_ids"][0].tolist() == enc.prompt_ids(q.question), "token ids differ"
    diff = (inp["pixel_values"] - pixels([S.render(s)])).abs().max().item()
    assert diff < 1e-4, diff
    log(f"pipeline check ok (pixel diff {diff:.2e}, {len(enc.prompt_ids(q.question))} prompt tokens)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "reference" / "checkpoint"))
    ap.add_argument("--workdir", default="/work/ckpt")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed", type=int, default=0)
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
    ap.add_argument("--phases-b", default="0:all:2-5;900:all:3-6;1500:all:4-8;2000:" + RELATION_HEAVY + ":4-8",
                    help="stage-B data curriculum 'start_step:kinds:min-max_objects;...' (kinds: all or comma list)")
    ap.add_argument("--att-sup", type=float, default=1.0,
                    help="weight of the stage B/C auxiliary attention-supervision loss (0 = off)")
    ap.add_argument("--att-heads", default="2.0,2.1,3.0", help="layer.head pairs supervised to attend to relevant cells")
    ap.add_argument("--att-q-heads", default="",
                    help="layer.head pairs supervised to attend (from the answer position) to the question's content words")
    ap.add_argument("--kinds-c", default=RELATION_HEAVY,
                    help="stage-C question kinds, comma list; a kind listed twice is drawn twice as often")
    ap.add_argument("--drop-frac", type=float, default=0.5,
                    help="stages B/C: share of samples whose image tokens are pruned at random to 16-144, "
                         "relevant cells always kept (so the model answers from what the answer needs)")
    ap.add_argument("--cls-aux", type=float, default=0.5)
    ap.add_argument("--heldout", type=int, default=240)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--ckpt-every", type=float, default=150.0, help="seconds")
    ap.add_argument("--n-eval", type=int, default=S.EVAL_SIZE)
    ap.add_argument("--fp16", action="store_true", help="save weights in float16")
    args = ap.parse_args()
    unknown = sorted(set(args.kinds_c.split(",")) - set(S.KINDS))
    if unknown:  # fail before an hour of stages A and B, not at the start of C
        ap.error(f"--kinds-c: unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(S.KINDS)}")

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
    enc = Encoder(tok)
    model = build_model(tok)
    head = torch.nn.Linear(model.config.vision_config.hidden_size, N_PAIRS)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model params {n_params / 1e6:.2f}M vocab {len(tok)}")

    state = None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        log(f"resuming from {ckpt_path}: stage {state['stage']} step {state['step']}")
    heldout = HeldOut(enc, args.heldout)

    cur = state["stage"] if state is not None else "A"
    for st in STAGES:
        if cur == "done" or STAGES.index(st) < STAGES.index(cur):
            continue
        run_stage(st, args, model, head, enc, tok, heldout, ckpt_path,
                  state if (state is not None and state["stage"] == st) else None, t_start)
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
    build_processor(tok).save_pretrained(out)
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    log(f"saved {out} ({size_mb:.1f} MB)")
    check_pipeline(out, enc)
    res, sizes, cov, wrong = final_eval(out, args.n_eval)
    log(f"FINAL eval (HF generate, n={sum(sizes.values())}, per kind {sizes}): "
        + " ".join(f"{k}={v:.4f}" for k, v in res.items()))
    log(f"[CLS]-attention object coverage (last vision layer): {cov}")
    for w in wrong:
        log(f"  wrong: {w}")
    (workdir / "final_eval.json").write_text(json.dumps(dict(accuracy=res, sizes=sizes, cls_coverage=cov,
                                                             size_mb=size_mb, elapsed_s=time.time() - t_start),
                                                        indent=2))


if __name__ == "__main__":
    main()
