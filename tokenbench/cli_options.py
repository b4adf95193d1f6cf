"""Command-line options shared by several subcommands, defined once.

``compare``, ``show`` and ``gate`` take the same budget flags, and ``compare`` and
``show`` the same model and task flags: each subcommand builds its parser from these
helpers, so a flag's name, help and checks cannot drift apart.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence, TypeVar

from tokenbench.budget import Budget
from tokenbench.errors import UsageError

T = TypeVar("T")
DTYPES = ("float32", "float16", "bfloat16")


def add_budget_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--budget`` (token counts) or ``--keep`` (fractions), mutually exclusive."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", help=f"{prefix}visual tokens to keep, comma list (e.g. 64,128)")
    group.add_argument("--keep", help=f"{prefix}fraction of visual tokens to keep, comma list (e.g. 0.222)")


def budgets(args: argparse.Namespace) -> list[Budget]:
    """The budgets the ``--budget``/``--keep`` flags give (``[]``: each strategy's default)."""
    return Budget.parse_option(args.budget, args.keep)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which model, task, seed, device and dtype a run uses."""
    parser.add_argument("--model", help="hub id, local checkpoint path or registered model name (default: the embedded reference model)")
    parser.add_argument("--adapter", help="adapter name, overriding the choice by the checkpoint's model_type")
    parser.add_argument("--task", help="NAME[:PATH] (default: the default task, shapes)")
    parser.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="task option, repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)


def key_values(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; an item without ``=`` is a usage error naming ``flag``.

    >>> key_values(["min_pixels=3136"], "--model-option")
    {'min_pixels': '3136'}
    """
    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"{flag} takes key=value, got {item!r}")
        out[key] = value
    return out


def parsed(fn: Callable[[str], T], text: str) -> T:
    """``fn(text)``, with a ``ValueError`` turned into a one-line usage error."""
    try:
        return fn(text)
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(str(exc)) from None


def strategy_specs(text: str) -> Any:
    """``--strategies`` parsed into :class:`tokenbench.harness.StrategySpec` items."""
    from tokenbench.harness import parse_strategies

    return parsed(parse_strategies, text)
