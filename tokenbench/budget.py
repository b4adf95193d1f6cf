"""Budgets: how many visual tokens a strategy may keep, as a count or a fraction.

>>> Budget.parse_counts("64,128")
[Budget(kind='count', value=64), Budget(kind='count', value=128)]
>>> Budget("fraction", 0.25).resolve(576)
144
>>> Budget("count", 64).label
'64'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tokenbench.errors import BudgetError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Budget:
    kind: Literal["count", "fraction", "default"]
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "count" and (self.value != int(self.value) or self.value <= 0):
            raise BudgetError(f"--budget values must be positive integers, got {self.value:g}")
        if self.kind == "fraction" and not 0.0 < self.value <= 1.0:
            raise BudgetError(f"--keep must be in (0, 1], got {self.value:g}")

    @classmethod
    def parse_counts(cls, text: str) -> list[Budget]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise BudgetError(f"--budget takes integers separated by commas, got {text!r}") from None
        return [cls("count", int(v) if v == int(v) else v) for v in values]

    @classmethod
    def parse_fractions(cls, text: str) -> list[Budget]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise BudgetError(f"--keep takes fractions separated by commas, got {text!r}") from None
        return [cls("fraction", v) for v in values]

    @classmethod
    def parse_option(cls, counts: str | None, fractions: str | None) -> list[Budget]:
        """The budgets of ``--budget`` or ``--keep`` (exclusive); none given: ``[]`` (each strategy's default).

        >>> [b.label for b in Budget.parse_option("64,128", None)]
        ['64', '128']
        >>> Budget.parse_option("64", "0.5")
        Traceback (most recent call last):
        ...
        tokenbench.errors.BudgetError: --budget and --keep are exclusive: give token counts or keep fractions, not both
        """
        if counts and fractions:
            raise BudgetError("--budget and --keep are exclusive: give token counts or keep fractions, not both")
        if counts:
            return cls.parse_counts(counts)
        return cls.parse_fractions(fractions) if fractions else []

    @property
    def label(self) -> str:
        if self.kind == "count":
            return str(int(self.value))
        if self.kind == "fraction":
            return "all" if self.value == 1.0 else f"{self.value:.1%}"
        return "default"

    def check(self, capacity: int | None) -> None:
        """Fail before any model loads when a count exceeds the known token count."""
        if self.kind == "count" and capacity is not None and self.value > capacity:
            raise BudgetError(f"--budget {int(self.value)} exceeds the model's {capacity} visual tokens per image")

    def resolve(self, num_visual: int, default_keep: float = 0.25) -> int:
        """Visual tokens to keep for an image with ``num_visual`` tokens."""
        if self.kind == "count":
            if self.value > num_visual:
                raise BudgetError(f"budget {int(self.value)} exceeds this image's {num_visual} visual tokens")
            return int(self.value)
        frac = self.value if self.kind == "fraction" else default_keep
        return max(1, min(num_visual, round(frac * num_visual)))


FULL = Budget("fraction", 1.0)


def sample_seed(seed: int, sample_id: str, strategy: str) -> int:
    """A 63-bit seed derived from the run seed, the sample and the strategy.

    Reruns agree; strategies do not share a draw.

    >>> sample_seed(0, "a", "random") == sample_seed(0, "a", "random")
    True
    >>> sample_seed(0, "a", "random") != sample_seed(0, "a", "pooling")
    True
    """
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{strategy}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_generator(seed: int, sample_id: str, strategy: str) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(sample_seed(seed, sample_id, strategy))
