"""The contract suite: one set of tests parametrised over every registered strategy.

Plugins installed in the environment are included, exactly as built-ins are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tokenbench import get_registry
from tokenbench.testing import check_strategy_contract

STRATEGIES = get_registry().names("strategies")


@pytest.fixture(scope="module")
def adapter(tiny_llava: Path):
    from tokenbench.adapters.llava import LlavaAdapter

    return LlavaAdapter.load(str(tiny_llava))


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_meets_contract(name: str, adapter, tmp_path: Path) -> None:
    strategy = get_registry().load("strategies", name)()
    check_strategy_contract(strategy, workdir=tmp_path, adapter=adapter, several_images=True)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_metadata(name: str) -> None:
    entry = get_registry().entry("strategies", name)
    cls = entry.load()
    assert cls.name == name, f"class attribute name {cls.name!r} differs from the registered name {name!r}"
    assert cls.description, f"{name}: empty description"
    module_doc = sys.modules[cls.__module__].__doc__
    assert (cls.__doc__ or "").strip() or (module_doc or "").strip(), f"{name}: neither the class nor its module has a docstring"


def test_contract_catches_a_strategy_that_overshoots(adapter, tmp_path: Path) -> None:
    import torch

    from tokenbench import Selection, StageSpec, Strategy

    class KeepsOneTooMany(Strategy):
        name = "one-too-many"
        description = "keeps budget + 1 tokens"

        def schedule(self, model):
            return (StageSpec.vision(),)

        def select(self, ctx):
            return Selection(keep=torch.arange(ctx.budget + 1))

    with pytest.raises(AssertionError, match="one-too-many: 5 visual tokens after the last stage, budget 4"):
        check_strategy_contract(KeepsOneTooMany(), workdir=tmp_path, adapter=adapter)
