"""tokenbench: fair, significance-tested benchmarks for visual-token reduction in VLMs.

The public API is what this module exports; plugin authors import nothing deeper.
Heavy modules (torch, transformers) load only when a model runs.
"""

from __future__ import annotations

from tokenbench.adapter import Adapter, GenerationResult, TokenCounts
from tokenbench.budget import Budget
from tokenbench.errors import (
    BudgetError,
    MeasurementError,
    ModelLoadError,
    PluginError,
    SampleFailure,
    SelectionError,
    StoreError,
    StrategyFailure,
    TaskDataError,
    TokenbenchError,
    UnknownNameError,
    UsageError,
)
from tokenbench.hookspecs import Register, hookimpl
from tokenbench.registry import get_registry
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy
from tokenbench.task import Sample, Task

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Budget",
    "BudgetError",
    "GenerationResult",
    "MeasurementError",
    "ModelInfo",
    "ModelLoadError",
    "PluginError",
    "Register",
    "Sample",
    "SampleFailure",
    "Selection",
    "SelectionError",
    "StageContext",
    "StageSpec",
    "StoreError",
    "Strategy",
    "StrategyFailure",
    "Task",
    "TaskDataError",
    "TokenCounts",
    "TokenbenchError",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "get_registry",
    "hookimpl",
    "results_frame",
]


def __getattr__(name: str) -> object:
    """Lazy exports: ``results_frame`` imports pandas only when first used."""
    if name == "results_frame":
        from tokenbench.frame import results_frame

        return results_frame
    raise AttributeError(f"module 'tokenbench' has no attribute {name!r}")
