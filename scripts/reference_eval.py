"""Checks of the reference model during and after training.

``HeldOut``: fast teacher-forced accuracy on a slice of the eval split (unreduced and
with only the relevant cells plus random others kept) and the stage-A vision decode;
``final_eval``: the exported checkpoint through the standard Hugging Face path
(processor + ``generate``), by kind, plus [CLS]-attention object coverage;
``check_pipeline``: the processor's ids and pixels equal the training-time ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from reference_model import S, input_embeds, lm_answer_logits, log, pixels, vision


class HeldOut:
    """A slice of the eval split with cached pixels (fast teacher-forced check)."""

    def __init__(self, enc, n):
        items = S.eval_split(n)
        self.scenes = [s for s, _ in items]
        self.qs = [q for _, q in items]
        self.pix = pixels([S.render(s) for s in self.scenes])
        self.enc = enc

    @torch.no_grad()
    def accuracy(self, model, bs=100, budget=None, contiguous=False):
        """Teacher-forced accuracy by kind; with ``budget``, each sample keeps only its
        relevant cells plus random others up to ``budget`` image tokens (a check that
        pruning to what the answer needs costs nothing), at their original position ids
        or, with ``contiguous``, renumbered contiguously."""
        model.eval()
        hits = {}
        gen = torch.Generator().manual_seed(1234)
        for i in range(0, len(self.qs), bs):
            qs = self.qs[i : i + bs]
            vh, _ = vision(model, self.pix[i : i + bs])
            ids, last, ans = self.enc.batch(qs)
            keep = None if budget is None else self.enc.keep_mask(qs, 1.0, gen, lo=budget, hi=budget)
            contig = torch.full((len(qs),), contiguous) if keep is not None else None
            pred = lm_answer_logits(model, ids, last, vh, keep=keep, contiguous=contig)[:, 0].argmax(-1)
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
        emb, _ = input_embeds(model, ids, vh)
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
        return dict(colour=col_ok / n_obj, shape=shp_ok / n_obj, background=bg_ok / n_bg, position=pos_ok / (len(self.scenes) * G * G))


def final_eval(out_dir: Path, n_eval: int, bs: int = 60, order: str = "question-first"):
    """Accuracy by kind of the exported checkpoint through processor + ``generate``; its
    chat template must render the prompts of ``order`` (the script's --prompt-order)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(out_dir)
    model = LlavaForConditionalGeneration.from_pretrained(out_dir, attn_implementation="eager").eval()
    items = S.eval_split(n_eval)
    hits: dict[str, list[bool]] = {}
    wrong = []
    for i in range(0, len(items), bs):
        chunk = items[i : i + bs]
        texts = [
            proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}], add_generation_prompt=True)
            for _, q in chunk
        ]
        assert texts[0] == S.prompt(chunk[0][1].question, order), texts[0]
        inputs = proc(images=[S.render(s) for s, _ in chunk], text=texts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        dec = proc.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for (_s, q), d in zip(chunk, dec):
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
        chunk = items[i : i + bs]
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
    """Processor output == training-time ids/pixels (of ``enc``'s prompt order) for one example."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(out_dir)
    s, q = S.eval_split(1)[0]
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}], add_generation_prompt=True)
    assert text == S.prompt(q.question, enc.order), repr(text)
    inp = proc(images=[S.render(s)], text=[text], return_tensors="pt")
    assert inp["input_ids"][0].tolist() == enc.prompt_ids(q.question), "token ids differ"
    diff = (inp["pixel_values"] - pixels([S.render(s)])).abs().max().item()
    assert diff < 1e-4, diff
    log(f"pipeline check ok (pixel diff {diff:.2e}, {len(enc.prompt_ids(q.question))} prompt tokens)")
