"""The reference model's pieces, shared by training and its checks.

The word-level tokenizer and processor saved with the model, the stock
``LlavaForConditionalGeneration`` config, and the training-time forward: prompt ids
with ``<image>`` expanded to the 144 patch tokens, stage-A patch targets, the answer
logits and the VQA loss (with attention supervision and token dropping).  Used by
``train_reference.py``; nothing here is imported by the package, and the scenes come
from the installed package (``pip install -e .`` first).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenbench.tasks.shapes import scenes as S  # the installed package's task data, as the task itself reads it

REPO = Path(__file__).resolve().parents[1]

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
MARKERS = ["<bg>"] + [f"<r{i}>" for i in range(S.GRID)] + [f"<c{i}>" for i in range(S.GRID)]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_TEXT = "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
_IMAGE = "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}"
_NL = "{{ '\\n' }}"  # an expression: chat templates trim the newline after a block tag


def _chat_template(user: str) -> str:
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}USER: "
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}" + user + "{% endif %}"
        "{% elif message['role'] == 'assistant' %} ASSISTANT: "
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}" + _TEXT + "{% endif %}</s>"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )


# the processor's chat template for each prompt order: it renders S.prompt(question, order)
# for a user turn of one image and one text, whatever the order of the two in the content list
CHAT_TEMPLATES = {
    "question-first": _chat_template(_TEXT + _NL + _IMAGE),
    "image-first": _chat_template(_IMAGE + _NL + _TEXT),
    "both": _chat_template(_TEXT + _NL + _IMAGE + _NL + _TEXT),
}
assert set(CHAT_TEMPLATES) == set(S.PROMPT_ORDERS)
CHAT_TEMPLATE = CHAT_TEMPLATES["both"]  # the shipped reference's (a fine-tune of the question-first run)
N_PAIRS = len(S.COLOUR_NAMES) * len(S.SHAPES)


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
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
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


def build_processor(tok, order: str = "question-first"):
    """The processor saved with the model; its chat template puts the question and the
    image in ``order`` (one of S.PROMPT_ORDERS), as the training prompts do."""
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
        chat_template=CHAT_TEMPLATES[order],
    )


def build_model(tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(
        image_size=S.IMAGE_SIZE,
        patch_size=S.CELL,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        projection_dim=128,
    )
    tc = LlamaConfig(
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        vocab_size=len(tok),
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=S.GRID * S.GRID,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
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
    """Token ids of (prompt [+ answer + EOS]) with <image> expanded to 144 tokens, for
    the prompt order ``order`` (one of S.PROMPT_ORDERS: where the question goes relative
    to the image)."""

    def __init__(self, tok, order: str = "question-first"):
        if order not in S.PROMPT_ORDERS:
            raise ValueError(f"prompt order {order!r}; one of {', '.join(S.PROMPT_ORDERS)}")
        self.tok = tok
        self.order = order
        self.image_id = tok.convert_tokens_to_ids("<image>")
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id
        self.cache: dict[str, list[int]] = {}
        self.qcache: dict[str, list[int]] = {}

    def _expand(self, raw: list[int]) -> list[int]:
        ids = []
        for t in raw:
            ids.extend([t] * (S.GRID * S.GRID) if t == self.image_id else [t])
        return ids

    def prompt_ids(self, question: str) -> list[int]:
        ids = self.cache.get(question)
        if ids is None:
            ids = self._expand(self.tok(S.prompt(question, self.order))["input_ids"])
            self.cache[question] = ids
        return ids

    def question_positions(self, question: str) -> list[int]:
        """Indices in ``prompt_ids(question)`` of the question's own tokens (every copy of
        it, wherever the prompt order puts it; not the template's "USER:", the image, or
        " ASSISTANT:")."""
        pos = self.qcache.get(question)
        if pos is None:
            # the template, piece by piece: the word-level tokenizer splits on whitespace and
            # punctuation, so the pieces' tokens concatenate to the whole prompt's
            ids, pos = [self.tok.bos_token_id], []
            for piece in re.split(r"(\{question\})", S.PROMPT_TEMPLATES[self.order]):
                text = question if piece == "{question}" else piece
                toks = self._expand(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []
                if piece == "{question}":
                    pos.extend(range(len(ids), len(ids) + len(toks)))
                ids.extend(toks)
            assert ids == self.prompt_ids(question), (question, self.order)
            self.qcache[question] = pos
        return pos

    def question_mask(self, qs, length: int) -> torch.Tensor:
        """(B, length) bool: the positions of each question's own tokens (see
        ``question_positions``) in the ids of ``batch(qs)``."""
        m = torch.zeros(len(qs), length, dtype=torch.bool)
        for i, q in enumerate(qs):
            m[i, self.question_positions(q.question)] = True
        return m

    def after_image_mask(self, qs, length: int, key_ids: torch.Tensor) -> torch.Tensor:
        """(B, length) bool: the question's content words (``key_ids``) that come after the
        image, the rows text-side raters read; empty for an order with no text there."""
        m = self.question_mask(qs, length)
        for i, q in enumerate(qs):
            ids = self.prompt_ids(q.question)
            m[i, : len(ids) - ids[::-1].index(self.image_id)] = False  # up to the last image token
            m[i, : len(ids)] &= torch.isin(torch.tensor(ids), key_ids)
        return m

    def answer_id(self, answer: str) -> int:
        return self.tok.convert_tokens_to_ids(answer)

    def relevance(self, qs, relation_later_cell: bool = False) -> torch.Tensor:
        """(B, 144) 0/1 mask of the relevant cells of each question; with
        ``relation_later_cell``, a relation's mask is only the later of its two cells in
        token order (the one that can see the other under causal attention)."""
        r = torch.zeros(len(qs), S.GRID * S.GRID)
        for i, q in enumerate(qs):
            cells = [max(q.relevant_cells)] if relation_later_cell and q.kind == "relation" else list(q.relevant_cells)
            r[i, cells] = 1
        return r

    def relation_pairs(self, qs) -> torch.Tensor:
        """(B, 2) image cells (later, earlier) of each relation's subject and neighbour in
        token order; (-1, -1) for the other kinds."""
        return torch.tensor([[max(q.relevant_cells), min(q.relevant_cells)] if q.kind == "relation" else [-1, -1] for q in qs])

    def keep_mask(self, qs, frac: float, gen: torch.Generator, lo: int = 16, hi: int | None = None, scenes=None, kinds=None, near_frac: float = 0.0):
        """(B, 144) bool: which image tokens each sample keeps.  A share ``frac`` of the
        samples keeps only k ~ U{lo..hi} tokens (hi defaults to 144): its relevant cells,
        then random others (what a pruning strategy leaves); the rest keep all 144.
        With ``scenes``, the objects next to a relevant cell (8-neighbourhood) are kept
        too, so a pruned relation sample keeps the distractor beside its subject.
        With ``kinds``, only questions of those kinds are pruned.  A share ``near_frac`` of
        the pruned samples keeps, instead of random others, the cells nearest its relevant
        ones (Chebyshev distance, random ties), as the shapes oracle does.  None when frac
        is 0."""
        n = S.GRID * S.GRID
        hi = n if hi is None else hi
        if frac <= 0:
            return None
        keep = torch.ones(len(qs), n, dtype=torch.bool)
        drop = torch.rand(len(qs), generator=gen) < frac
        for i, q in enumerate(qs):
            if not drop[i] or (kinds is not None and q.kind not in kinds):
                continue
            k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            score = torch.rand(n, generator=gen)
            if near_frac > 0 and float(torch.rand((), generator=gen)) < near_frac:
                score = score + (S.GRID - self._distance_to(q.relevant_cells))  # nearest first
            protected = set(q.relevant_cells)
            if scenes is not None:
                near = {
                    (r + dr) * S.GRID + c + dc
                    for r, c in (divmod(x, S.GRID) for x in q.relevant_cells)
                    for dr in (-1, 0, 1)
                    for dc in (-1, 0, 1)
                    if 0 <= r + dr < S.GRID and 0 <= c + dc < S.GRID
                }
                protected |= {o.cell for o in scenes[i].objects if o.cell in near}
            score[list(protected)] = S.GRID + 2.0  # protected cells first
            keep[i] = False
            keep[i, score.topk(max(k, len(protected))).indices] = True
        return keep

    @staticmethod
    def _distance_to(cells) -> torch.Tensor:
        """(144,) Chebyshev distance on the grid from every cell to the nearest of ``cells``."""
        idx = torch.arange(S.GRID * S.GRID)
        c = torch.tensor(list(cells))
        d = torch.maximum((idx[:, None] // S.GRID - c // S.GRID).abs(), (idx[:, None] % S.GRID - c % S.GRID).abs())
        return d.min(1).values.float()

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


def input_embeds(model, ids, vis_hidden):
    """The language model's input: word embeddings with the projected patch tokens
    scattered into the <image> positions, and the (B, L) mask of those positions."""
    m = model.model
    emb = m.get_input_embeddings()(ids)
    img = ids == model.config.image_token_index
    emb = emb.masked_scatter(img[..., None], m.multi_modal_projector(vis_hidden[:, 1:]).to(emb.dtype))
    return emb, img


def present_mask(ids, img, keep):
    """(B, L) long: 1 for every token a sample keeps, 0 for its dropped image tokens.
    ``img`` (B, L) marks the image positions, ``keep`` (B, 144) which of them it keeps."""
    present = torch.ones(ids.shape, dtype=torch.long)
    present[img] = keep.reshape(-1).long()
    return present


def contiguous_position_ids(present):
    """(B, L) position ids that renumber each sample's kept tokens 0, 1, 2, ... with the
    dropped ones (``present_mask`` 0, masked out) removed from the count: the adapter's
    contiguous position policy."""
    return (present.cumsum(1) - 1).clamp(min=0)


def lm_answer_logits(model, ids, last, vis_hidden, att_heads=None, keep=None, local=None, contiguous=None, rater_heads=None):
    """Logits at the answer position and at the EOS position: (B, 2, V).
    With att_heads [(layer, head), ...] also returns those heads' attention from the
    answer position onto the 144 image tokens: (B, n_heads, 144).
    With local ([(layer, head), ...], pairs (B, 2) of image cells (query, key)) also
    returns each head's attention from the query cell onto the key cell: (B, n_local).
    keep (B, 144) bool masks the dropped image tokens out of every attention, with the
    position ids left as they are: the same computation as the adapter's input-level
    pruning (which removes them and keeps the survivors' original position ids).
    contiguous (B,) bool: those samples' kept tokens get contiguous position ids instead
    (``contiguous_position_ids``), the other position policy.
    With rater_heads [(layer, head), ...] also returns those heads' whole attention
    matrices: (B, n_rater_heads, L, L) (every query row, for the text-side raters)."""
    m = model.model
    emb, img = input_embeds(model, ids, vis_hidden)
    attention_mask = None if keep is None else present_mask(ids, img, keep)
    # right padding + causal attention: padded tail never influences real tokens
    position_ids = None
    if attention_mask is not None and contiguous is not None and bool(contiguous.any()):
        original = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
        position_ids = torch.where(contiguous[:, None], contiguous_position_ids(attention_mask), original)
    o = m.language_model(
        inputs_embeds=emb,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_attentions=bool(att_heads) or bool(local) or bool(rater_heads),
    )
    h = o.last_hidden_state
    idx = torch.stack([last, last + 1], 1)  # (B,2)
    hs = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
    logits = model.lm_head(hs)
    if not att_heads and not local and not rater_heads:
        return logits
    B = ids.shape[0]
    out = [logits]
    if att_heads:
        rows = [o.attentions[layer][torch.arange(B), head, last] for layer, head in att_heads]  # (B, L) each
        out.append(torch.stack(rows, 1))  # (B, n_heads, L)
    if local:
        heads, pairs = local
        start = img.long().argmax(1)  # first image position
        q, k = start + pairs[:, 0].clamp(min=0), start + pairs[:, 1].clamp(min=0)
        out.append(torch.stack([o.attentions[layer][torch.arange(B), head, q, k] for layer, head in heads], 1))
    if rater_heads:
        out.append(torch.stack([o.attentions[layer][:, head] for layer, head in rater_heads], 1))
    return tuple(out)


def vqa_loss(
    model,
    ids,
    last,
    ans,
    eos,
    vis_hidden,
    rel=None,
    att_heads=None,
    att_w=0.0,
    key_ids=None,
    keep=None,
    local=None,
    local_w=1.0,
    question_mask=None,
    contiguous=None,
    raters=None,
):
    """Answer(+EOS) cross-entropy; optionally plus att_w * attention supervision:
    -log(attention mass on the relevant cells) for the given (layer, head)s at the
    answer position (a training-only auxiliary loss; the model stays stock).
    att_heads: (cell_heads, question_heads): cell heads are pushed onto the relevant image
    cells, question heads onto the question's words (this breaks the chicken-and-egg
    plateau where the answer position neither knows the question nor looks at the image);
    question_mask (B, L) bool (``Encoder.question_mask``) marks the question's words wherever
    the prompt order puts them, and key_ids narrows them to its content words.
    local: ([(layer, head), ...], pairs (B, 2) of (query cell, key cell), -1 where a
    sample has none): those heads are pushed, at the query cell, onto the key cell, with
    weight local_w (when att_w > 0).
    raters: ([(layer, head), ...], query mask (B, L) bool, relevant cells (B, 144), weight):
    those heads are pushed, at every masked query position (the question's content words
    after the image), onto the relevant cells: what text-side raters (SparseVLM) read."""
    cell_heads, q_heads = att_heads if att_heads else ([], [])
    heads = list(cell_heads) + list(q_heads)
    local = local if (local and att_w > 0 and bool((local[1][:, 0] >= 0).any())) else None
    want_att = bool(heads) and att_w > 0
    raters = raters if (raters and raters[3] > 0 and bool(raters[1].any())) else None
    out = lm_answer_logits(
        model, ids, last, vis_hidden, heads if want_att else None, keep=keep, local=local, contiguous=contiguous, rater_heads=raters[0] if raters else None
    )
    logits, *parts = out if isinstance(out, tuple) else (out,)  # then att, local, raters (each if asked)
    att = parts.pop(0) if want_att else None
    loc = parts.pop(0) if local else None
    rat = parts.pop(0) if raters else None
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
            if question_mask is None:
                raise ValueError("question heads need the question's positions (Encoder.question_mask)")
            qmask = question_mask
            if key_ids is not None:  # only its content words (colours, shapes, directions)
                qmask = qmask & torch.isin(ids, key_ids)
            qmask = qmask.float()
            masses.append((att[:, nc:] * qmask[:, None]).sum(-1))
        mass = torch.cat(masses, 1)
        loss = loss + att_w * (-torch.log(mass + 1e-4)).mean()
    if loc is not None:
        has = local[1][:, 0] >= 0
        loss = loss + local_w * (-torch.log(loc[has] + 1e-4)).mean()
    if rat is not None:
        _, rmask, rrel, rater_w = raters
        target = torch.zeros(ids.shape)
        target[ids == model.config.image_token_index] = rrel.reshape(-1)
        mass = (rat * target[:, None, None, :]).sum(-1)  # (B, heads, L)
        loss = loss + rater_w * (-torch.log(mass + 1e-4))[rmask[:, None].expand_as(mass)].mean()
    acc = (logits[:, 0].argmax(-1) == ans).float().mean()
    return loss, acc
