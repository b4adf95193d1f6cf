"""The reference model's training pieces (scripts/reference_model.py), fast checks only.

The full training run is hours of CPU; these pin down the parts whose silent failure
would make the shipped checkpoint disagree with its script: which image tokens a
pruned training sample keeps, that masking them out equals removing them (what the
adapter's pruning does), and that the shipped processor feeds the model exactly the
ids and pixels the script trained on.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def rm():  # the script's module, imported from the source tree
    sys.path.insert(0, str(SCRIPTS))
    try:
        import reference_model

        yield reference_model
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def questions(rm):
    return [q for _, q in rm.S.eval_split(40)]


def test_a_pruned_sample_keeps_its_relevant_cells_and_exactly_its_budget(rm, questions):
    enc = rm.Encoder(rm.build_tokenizer())
    keep = enc.keep_mask(questions, 1.0, torch.Generator().manual_seed(0), lo=16, hi=16)
    assert keep.shape == (len(questions), 144)
    for q, row in zip(questions, keep):
        assert int(row.sum()) == max(16, len(q.relevant_cells))
        assert row[list(q.relevant_cells)].all(), q.id


def test_a_near_filled_sample_keeps_the_cells_nearest_its_relevant_ones(rm, questions):
    enc = rm.Encoder(rm.build_tokenizer())
    keep = enc.keep_mask(questions, 1.0, torch.Generator().manual_seed(0), lo=24, hi=24, near_frac=1.0)
    for q, row in zip(questions, keep):
        dist = enc._distance_to(q.relevant_cells)
        assert int(row.sum()) == max(24, len(q.relevant_cells)) and row[list(q.relevant_cells)].all()
        if not row.all():  # nothing dropped is nearer than anything kept
            assert dist[row].max() <= dist[~row].min(), q.id
    # without near fills the kept others are random: some dropped cell is nearer than a kept one
    rand = enc.keep_mask(questions, 1.0, torch.Generator().manual_seed(0), lo=24, hi=24)
    assert any(enc._distance_to(q.relevant_cells)[r].max() > enc._distance_to(q.relevant_cells)[~r].min() for q, r in zip(questions, rand))


def test_token_drops_are_a_pure_function_of_the_generator_seed(rm, questions):
    enc = rm.Encoder(rm.build_tokenizer())
    a = enc.keep_mask(questions, 0.5, torch.Generator().manual_seed(7))
    b = enc.keep_mask(questions, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    dropped = (~a).any(1)
    assert 0 < int(dropped.sum()) < len(questions)  # about half the samples are pruned
    assert enc.keep_mask(questions, 0.0, torch.Generator().manual_seed(7)) is None


def _random_model_batch(rm, questions, n, order="question-first"):
    """A random-weight model (seed 0), the encoder of ``order`` and the first ``n`` eval
    questions' vision states and ids."""
    torch.manual_seed(0)
    tok = rm.build_tokenizer()
    enc = rm.Encoder(tok, order)
    model = rm.build_model(tok).eval()
    qs = questions[:n]
    with torch.no_grad():
        vh, _ = rm.vision(model, rm.pixels([rm.S.render(s) for s, _ in rm.S.eval_split(n)]))
    ids, last, _ = enc.batch(qs)
    return model, enc, qs, vh, ids, last


def test_masking_dropped_tokens_equals_removing_them_with_their_position_ids(rm, questions):
    model, enc, qs, vh, ids, last = _random_model_batch(rm, questions, 4)
    with torch.no_grad():
        keep = enc.keep_mask(qs, 1.0, torch.Generator().manual_seed(1), lo=32, hi=32)
        masked = rm.lm_answer_logits(model, ids, last, vh, keep=keep)[:, 0]
        unmasked = rm.lm_answer_logits(model, ids, last, vh)[:, 0]
        m = model.model
        for i in range(len(qs)):
            n = int(last[i]) + 1
            emb, img = rm.input_embeds(model, ids[i : i + 1, :n], vh[i : i + 1])
            img = img[0]
            kept = torch.ones(n, dtype=torch.bool)
            kept[img] = keep[i]
            # an explicit all-ones mask: without one, transformers reads the gaps in
            # position_ids as packed-sequence boundaries and blocks attention across them
            out = m.language_model(
                inputs_embeds=emb[:, kept],
                position_ids=torch.arange(n)[kept][None],
                attention_mask=torch.ones(1, int(kept.sum()), dtype=torch.long),
                use_cache=False,
            )
            removed = model.lm_head(out.last_hidden_state[:, -1])[0]
            torch.testing.assert_close(masked[i], removed, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(masked, unmasked, atol=1e-3)  # the mask does drop something


def test_the_shipped_processor_gives_the_ids_and_pixels_the_script_trained_on(rm):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import reference_eval
    finally:
        sys.path.remove(str(SCRIPTS))
    checkpoint = Path(str(resources.files("tokenbench.reference") / "checkpoint"))
    reference_eval.check_pipeline(checkpoint, rm.Encoder(rm.build_tokenizer(), "both"))  # raises on any difference
    # the shipped model reads the question before the image and again after it (issue 21)
    assert (checkpoint / "chat_template.jinja").read_text() == rm.CHAT_TEMPLATES["both"] == rm.CHAT_TEMPLATE


@pytest.mark.parametrize("order", ["question-first", "image-first", "both"])
def test_each_prompt_order_puts_the_144_image_tokens_in_place_and_exports_its_own_template(rm, order, tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import reference_eval
    finally:
        sys.path.remove(str(SCRIPTS))
    tok = rm.build_tokenizer()
    enc = rm.Encoder(tok, order)
    image_id = tok.convert_tokens_to_ids("<image>")
    prefix = tok("USER:", add_special_tokens=False)["input_ids"]
    suffix = tok(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    for _, q in rm.S.eval_split(12):
        ids = enc.prompt_ids(q.question)
        words = tok(q.question, add_special_tokens=False)["input_ids"]
        image = [image_id] * 144
        expected = {"question-first": words + image, "image-first": image + words, "both": words + image + words}[order]
        assert ids == [tok.bos_token_id] + prefix + expected + suffix, (order, q.id)
        assert ids.count(image_id) == 144
        pos = enc.question_positions(q.question)
        assert [ids[i] for i in pos] == words * (2 if order == "both" else 1)
    # the exported processor renders and tokenizes the training prompt (raises on any difference)
    rm.build_processor(tok, order).save_pretrained(tmp_path)
    reference_eval.check_pipeline(tmp_path, enc)


def test_with_the_question_first_its_mask_is_the_one_before_the_image(rm, questions):
    """The question heads' target (content words of the question) is unchanged for the
    shipped order: before --prompt-order it was every content word before the image."""
    tok = rm.build_tokenizer()
    enc = rm.Encoder(tok)
    ids, _, _ = enc.batch(questions)
    key_ids = torch.tensor([tok.get_vocab()[w] for w in list(rm.S.COLOUR_NAMES) + list(rm.S.SHAPES) + ["left", "right", "above", "below"]])
    img = ids == tok.convert_tokens_to_ids("<image>")
    before_image = torch.arange(ids.shape[1])[None] < img.long().argmax(1)[:, None]
    assert torch.equal(enc.question_mask(questions, ids.shape[1]) & torch.isin(ids, key_ids), before_image & torch.isin(ids, key_ids))


def test_the_rater_rows_are_the_content_words_after_the_image_and_only_those(rm, questions):
    """--rater-heads supervises the rows SparseVLM's raters read: the question's content
    words in its copy after the image; an order with no question there has none."""
    tok = rm.build_tokenizer()
    key_ids = torch.tensor([tok.get_vocab()[w] for w in list(rm.S.COLOUR_NAMES) + list(rm.S.SHAPES) + ["left", "right", "above", "below"]])
    enc = rm.Encoder(tok, "both")
    ids, _, _ = enc.batch(questions)
    mask = enc.after_image_mask(questions, ids.shape[1], key_ids)
    image_id = tok.convert_tokens_to_ids("<image>")
    for q, row, seq in zip(questions, mask, ids):
        end = int((seq == image_id).nonzero().max()) + 1  # just after the last image token
        content = [t for t in tok(q.question, add_special_tokens=False)["input_ids"] if t in key_ids]
        assert not row[:end].any() and seq[row].tolist() == content, q.id
    qf = rm.Encoder(tok)
    assert not qf.after_image_mask(questions, qf.batch(questions)[0].shape[1], key_ids).any()


def test_with_scenes_a_pruned_sample_also_keeps_the_objects_beside_its_relevant_cells(rm):
    items = rm.S.eval_split(40)
    qs, scenes = [q for _, q in items], [s for s, _ in items]
    enc = rm.Encoder(rm.build_tokenizer())
    keep = enc.keep_mask(qs, 1.0, torch.Generator().manual_seed(0), lo=16, hi=16, scenes=scenes)
    beside = 0
    for q, sc, row in zip(qs, scenes, keep):
        cells = [divmod(c, rm.S.GRID) for c in q.relevant_cells]
        for o in sc.objects:
            if any(max(abs(o.row - r), abs(o.col - c)) <= 1 for r, c in cells):
                assert row[o.cell], (q.id, o)
                beside += o.cell not in q.relevant_cells
        assert int(row.sum()) >= 16
    assert beside > 0  # the relation distractors exist and were kept


def test_relation_supervision_targets_follow_token_order(rm, questions):
    enc = rm.Encoder(rm.build_tokenizer())
    pairs = enc.relation_pairs(questions)
    full, later = enc.relevance(questions), enc.relevance(questions, relation_later_cell=True)
    n_relation = 0
    for q, (q_cell, k_cell), f, lt in zip(questions, pairs.tolist(), full, later):
        if q.kind != "relation":
            assert (q_cell, k_cell) == (-1, -1) and torch.equal(f, lt)
            continue
        n_relation += 1
        subject, neighbour = q.relevant_cells
        assert {q_cell, k_cell} == {subject, neighbour} and q_cell > k_cell  # query is the later token
        assert lt.nonzero().flatten().tolist() == [q_cell] and int(f.sum()) == 2
    assert n_relation > 0


def test_keep_mask_prunes_only_the_kinds_it_is_given(rm, questions):
    enc = rm.Encoder(rm.build_tokenizer())
    keep = enc.keep_mask(questions, 1.0, torch.Generator().manual_seed(0), kinds=("count",))
    for q, row in zip(questions, keep):
        assert bool(row.all()) == (q.kind != "count"), q.id


def test_local_attention_is_the_probability_from_the_query_cell_to_the_key_cell(rm, questions):
    torch.manual_seed(0)
    tok = rm.build_tokenizer()
    enc = rm.Encoder(tok)
    model = rm.build_model(tok).eval()
    model.model.language_model.set_attn_implementation("eager")
    items = rm.S.eval_split(4)
    qs = [q for _, q in items]
    pairs = torch.tensor([[100, 99], [20, 8], [143, 0], [5, 5]])
    with torch.no_grad():
        vh, _ = rm.vision(model, rm.pixels([rm.S.render(s) for s, _ in items]))
        ids, last, _ = enc.batch(qs)
        _, local = rm.lm_answer_logits(model, ids, last, vh, local=([(1, 0), (0, 1)], pairs))
        emb, img = rm.input_embeds(model, ids, vh)
        att = model.model.language_model(inputs_embeds=emb, use_cache=False, output_attentions=True).attentions
    for b, (qc, kc) in enumerate(pairs.tolist()):
        start = int(img[b].long().argmax())  # the question comes first: its length varies
        assert local[b, 0] == att[1][b, 0, start + qc, start + kc]
        assert local[b, 1] == att[0][b, 1, start + qc, start + kc]


def test_a_resume_names_every_recipe_flag_that_differs_from_the_checkpoint(rm):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import train_reference
    finally:
        sys.path.remove(str(SCRIPTS))
    saved = {"drop_frac": 0.5, "drop_kinds": "all", "workdir": "/a", "threads": 2, "seed": 0}
    now = {"drop_frac": 0.0, "drop_kinds": "all", "workdir": "/b", "threads": 4, "seed": 0, "steps_c": 600}
    changed = train_reference.flags_changed(saved, now)
    assert changed == ["--drop-frac: checkpoint 0.5, now 0.0", "--threads: checkpoint 2, now 4"]


def test_contiguous_training_positions_renumber_the_kept_tokens_as_the_adapter_does(rm, questions):
    model, enc, qs, vh, ids, last = _random_model_batch(rm, questions, 3, "both")
    with torch.no_grad():
        keep = enc.keep_mask(qs, 1.0, torch.Generator().manual_seed(2), lo=20, hi=20)
        pos = rm.contiguous_position_ids(rm.present_mask(ids, ids == model.config.image_token_index, keep))
        contiguous = rm.lm_answer_logits(model, ids, last, vh, keep=keep, contiguous=torch.ones(3, dtype=torch.bool))[:, 0]
        original = rm.lm_answer_logits(model, ids, last, vh, keep=keep)[:, 0]
        for i in range(len(qs)):
            n = int(last[i]) + 1
            emb, im = rm.input_embeds(model, ids[i : i + 1, :n], vh[i : i + 1])
            kept = torch.ones(n, dtype=torch.bool)
            kept[im[0]] = keep[i]
            assert pos[i, :n][kept].tolist() == list(range(int(kept.sum())))  # 0, 1, 2, ... over what is kept
            out = model.model.language_model(inputs_embeds=emb[:, kept], use_cache=False)  # the stock model, default positions
            torch.testing.assert_close(contiguous[i], model.lm_head(out.last_hidden_state[:, -1])[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(contiguous, original, atol=1e-3)  # the policy changes the logits
