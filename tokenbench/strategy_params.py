"""A strategy's parameters: their command-line coercion and the label they give a run.

>>> strategy_label("fastv", {"k": 3}, {"k": 2})
'fastv:k=3'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenbench.errors import UsageError

__all__ = ["coerce_param", "strategy_label"]


def strategy_label(name: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """``name:key=value,...`` with the parameters sorted; those equal to ``defaults`` left out.

    >>> strategy_label("fastv", {"k": 3, "r": 0.5}, {"k": 2, "r": 0.5})
    'fastv:k=3'
    >>> strategy_label("fastv", {"k": 2}, {"k": 2})
    'fastv'
    >>> strategy_label("pdrop", {"layers": [8, 16, 24]}, {"layers": (8, 16, 24)})  # as read back from JSON
    'pdrop'
    """
    args = ",".join(f"{k}={v}" for k, v in sorted(params.items()) if defaults is None or not _same_value(v, defaults.get(k)))
    return f"{name}:{args}" if args else name


def _same_value(a: Any, b: Any) -> bool:
    """Equal, counting a list and a tuple of the same items as equal (JSON has no tuples)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return bool(a == b)


def coerce_param(strategy: str, key: str, value: Any, default: Any) -> Any:
    """Turn a command-line string into the type of the parameter's default."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) if default else v for v in value.split("/"))
    except ValueError:
        raise UsageError(f"strategy {strategy!r}: parameter {key}={value!r} is not a {type(default).__name__}") from None
    return value
