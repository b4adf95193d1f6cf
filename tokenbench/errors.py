"""Every error tokenbench raises on purpose, under one base.

The command line catches :class:`TokenbenchError` and prints its message as one line
(exit status 2); anything else is a bug and keeps its traceback. The subclasses say
whose fault it is:

- :class:`UsageError`: a value the user gave (a flag, a parameter, a budget, a name);
- :class:`PluginError`: a plugin that cannot be loaded or broke the contract
  (:class:`SelectionError`, :class:`StrategyFailure`);
- :class:`TaskDataError`: a task's input files;
- :class:`ModelLoadError`: a checkpoint that cannot be loaded;
- :class:`StoreError`: a results store that cannot be used as it is;
- :class:`MeasurementError`: a measurement that would be wrong if it went on;
- :class:`SampleFailure`: ``--on-error fail`` stopped the run at a failing sample.

The built-in classes that existed before the base keep their second base
(``ValueError``, ``LookupError``, ``RuntimeError``) so that existing ``except``
clauses still catch them.

>>> issubclass(BudgetError, UsageError) and issubclass(UsageError, TokenbenchError)
True
"""

from __future__ import annotations


class TokenbenchError(Exception):
    """Base of every error tokenbench raises on purpose; its message is one line naming the culprit and the fix."""


class UsageError(TokenbenchError, ValueError):
    """A bad value from the user: a command-line flag, a strategy parameter, a configuration file."""


class BudgetError(UsageError):
    """A budget that cannot apply (≤ 0, above the token count, fraction outside (0, 1])."""


class UnknownNameError(UsageError, LookupError):
    """A name that no plugin registered; the message suggests close matches."""


class PluginError(TokenbenchError):
    """A plugin or one of its entries could not be loaded; the message names it."""


class SelectionError(PluginError, ValueError):
    """A strategy returned a selection that breaks the contract."""


class StrategyFailure(PluginError, RuntimeError):
    """A strategy raised or broke the contract for one sample of a batch (``index`` in the batch)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class TaskDataError(TokenbenchError, ValueError):
    """A task's input file is missing or malformed; the message names file and line."""


class ModelLoadError(TokenbenchError, RuntimeError):
    """A model could not be loaded; the message says which and how to fix it."""


class StoreError(TokenbenchError, RuntimeError):
    """The store cannot be used as it is (newer schema, unreadable file)."""


class MeasurementError(TokenbenchError, RuntimeError):
    """A measurement that cannot be trusted (for example an operator FLOPs cannot count)."""


class SampleFailure(TokenbenchError, RuntimeError):
    """Raised with ``--on-error fail`` at the first failing sample."""


__all__ = [
    "BudgetError",
    "MeasurementError",
    "ModelLoadError",
    "PluginError",
    "SampleFailure",
    "SelectionError",
    "StoreError",
    "StrategyFailure",
    "TaskDataError",
    "TokenbenchError",
    "UnknownNameError",
    "UsageError",
]
