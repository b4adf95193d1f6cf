"""Position ids after a reduction: a declared, switchable property of every strategy.

The adapter-level equivalence (contiguous vision-stage pruning equals the stock model
fed the kept tokens) is in tests/test_adapter_llava.py; here: the parameter, the run
key, and how the decoder lays out a reduced sequence under each policy.
"""

from __future__ import annotations

import pytest
import torch

import tokenbench
from tokenbench.token_layout import TokenLayout, contiguous_positions, rebuild_row


def test_every_strategy_declares_a_policy_and_positions_switches_it() -> None:
    reg = tokenbench.get_registry()
    for name in reg.names("strategies"):
        cls = reg.load("strategies", name)
        assert cls.position_policy in ("original", "contiguous"), name
        other = "original" if cls.position_policy == "contiguous" else "contiguous"
        s = cls(positions=other)
        assert s.position_policy == other and s.params["positions"] == other
        assert s.label == f"{name}:positions={other}" or s.label.endswith(f"positions={other}")
        same = cls(positions=cls.position_policy)  # the default is not a parameter: same run key and label as no flag
        assert "positions" not in same.params and same.label == cls().label


def test_a_bad_policy_is_one_line_naming_the_values() -> None:
    with pytest.raises(tokenbench.UsageError, match=r"strategy 'fastv': parameter positions='sequential' must be one of original, contiguous"):
        tokenbench.get_registry().load("strategies", "fastv")(positions="sequential")


def test_the_built_ins_follow_their_official_code() -> None:
    reg = tokenbench.get_registry()
    assert reg.load("strategies", "sparsevlm").position_policy == "contiguous"  # the release renumbers
    assert reg.load("strategies", "attention-only").position_policy == "contiguous"  # FasterVLM prunes before the LLM
    assert reg.load("strategies", "fastv").position_policy == "original"  # FastV keeps the kept tokens' ids


def test_the_policy_is_part_of_the_run_key() -> None:
    from tokenbench.compare import CompareRequest, run_config
    from tokenbench.store import run_key
    from tokenbench.tasks.shapes.task import ShapesTask

    fastv = tokenbench.get_registry().load("strategies", "fastv")
    req = CompareRequest(strategies=[], budgets=[])
    task = ShapesTask(n=8)
    a = run_config({"model": "m"}, task, fastv(), tokenbench.Budget("count", 4), req, "t")
    b = run_config({"model": "m"}, task, fastv(positions="contiguous"), tokenbench.Budget("count", 4), req, "t")
    assert a["position_policy"] == "original" and b["position_policy"] == "contiguous"
    assert run_key(a) != run_key(b)


def _layout() -> TokenLayout:
    """One sample: 2 text tokens, 6 visual tokens (ids 2..7), 2 text tokens (ids 8, 9)."""
    origin = torch.tensor([-1, -1, 0, 1, 2, 3, 4, 5, -1, -1])
    hidden = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    pos = torch.arange(10)[:, None]
    return TokenLayout(hidden[None], pos[None], torch.ones(1, 10, dtype=torch.bool), origin[None])


@pytest.mark.parametrize("at_end", [False, True])
def test_rebuilt_sequence_under_each_policy(at_end: bool) -> None:
    layout = _layout()
    valid_idx = torch.arange(10)
    v_idx = torch.arange(2, 8)
    merged = torch.full((1, 3), -1.0)
    sel = tokenbench.Selection(keep=torch.tensor([1, 4]), merged=merged, merged_positions=torch.tensor([2]), merged_at_end=at_end)
    h, p, o, m = rebuild_row(layout, 0, valid_idx, v_idx, sel, "original")
    # merged token after its donor (visual index 2) or after every kept token; it carries the donor's origin and id
    assert o.tolist() == ([-1, -1, 1, 2, 4, -1, -1] if not at_end else [-1, -1, 1, 4, 2, -1, -1])
    assert p.flatten().tolist() == ([0, 1, 3, 4, 6, 8, 9] if not at_end else [0, 1, 3, 6, 4, 8, 9])
    assert h[:, 0].tolist().count(-1.0) == 1
    assert m.tolist() == [x == 2 for x in o.tolist()]  # the merged token, and only it, is flagged
    _, pc, oc, _ = rebuild_row(layout, 0, valid_idx, v_idx, sel, "contiguous")
    assert oc.tolist() == o.tolist() and pc.flatten().tolist() == list(range(7))


def test_m_rope_contiguous_keeps_the_visual_ids_and_closes_the_gap_after_them() -> None:
    # text (0), a 2x3 image at t=1 whose kept tokens are (1,1,1) and (1,2,3), text after the full image at 5, 6
    ids = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 2, 3], [5, 5, 5], [6, 6, 6]])
    visual = torch.tensor([False, True, True, False, False])
    assert contiguous_positions(ids, visual).tolist() == [[0, 0, 0], [1, 1, 1], [1, 2, 3], [4, 4, 4], [5, 5, 5]]
