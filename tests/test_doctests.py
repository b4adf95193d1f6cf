"""Every docstring example in the installed package runs (torchmetrics-style doctested docs)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("tokenbench", "tokenbench.strategies", "tokenbench.adapters", "tokenbench.tasks", "tokenbench.tasks.shapes")
MODULES = sorted({p for p in PACKAGES} | {m.name for p in PACKAGES for m in pkgutil.iter_modules(importlib.import_module(p).__path__, p + ".") if not m.ispkg})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
