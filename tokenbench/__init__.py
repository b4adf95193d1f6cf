"""tokenbench: fair, significance-tested benchmarks for visual-token reduction in VLMs.

The public API is what this module exports; plugin authors import nothing deeper.
Heavy modules (torch, transformers) load only when a model runs: the names of the
decoder-adapter machinery (:class:`DecoderAdapter` and what it is built on) and
``results_frame`` are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
from tokenbench.named_model import NamedModel
from tokenbench.registry import get_registry
from tokenbench.segments import Segment, split_budget, stack_segments
from tokenbench.strategy import ModelInfo, Selection, StageContext, StageSpec, Strategy
from tokenbench.task import Sample, Task

if TYPE_CHECKING:
    from tokenbench.checkpoints import load_pretrained, model_identity, torch_dtype
    from tokenbench.decoder_adapter import DecoderAdapter, DecodeRun, EncodedBatch
    from tokenbench.decoding import DecodeOutput, DecoderParts, SampleSetup, eos_token_ids, make_stop, prefill_and_decode
    from tokenbench.flops import MacCounter
    from tokenbench.flops_meter import FlopsMeter
    from tokenbench.frame import results_frame
    from tokenbench.processors import load_processor
    from tokenbench.segment_selection import select_per_segment
    from tokenbench.timing import mark_phase
    from tokenbench.token_layout import TokenLayout

__version__ = "0.1.0"

#: public names whose modules import torch, numpy or pandas, by module
_LAZY = {
    "load_pretrained": "tokenbench.checkpoints",
    "model_identity": "tokenbench.checkpoints",
    "torch_dtype": "tokenbench.checkpoints",
    "DecodeRun": "tokenbench.decoder_adapter",
    "DecoderAdapter": "tokenbench.decoder_adapter",
    "EncodedBatch": "tokenbench.decoder_adapter",
    "DecodeOutput": "tokenbench.decoding",
    "DecoderParts": "tokenbench.decoding",
    "SampleSetup": "tokenbench.decoding",
    "TokenLayout": "tokenbench.token_layout",
    "eos_token_ids": "tokenbench.decoding",
    "make_stop": "tokenbench.decoding",
    "prefill_and_decode": "tokenbench.decoding",
    "FlopsMeter": "tokenbench.flops_meter",
    "MacCounter": "tokenbench.flops",
    "results_frame": "tokenbench.frame",
    "load_processor": "tokenbench.processors",
    "select_per_segment": "tokenbench.segment_selection",
    "mark_phase": "tokenbench.timing",
}

__all__ = [
    "Adapter",
    "Budget",
    "BudgetError",
    "DecodeOutput",
    "DecodeRun",
    "DecoderAdapter",
    "DecoderParts",
    "EncodedBatch",
    "FlopsMeter",
    "GenerationResult",
    "MacCounter",
    "MeasurementError",
    "ModelInfo",
    "ModelLoadError",
    "NamedModel",
    "PluginError",
    "Register",
    "Sample",
    "SampleFailure",
    "SampleSetup",
    "Segment",
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
    "TokenLayout",
    "TokenbenchError",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "eos_token_ids",
    "get_registry",
    "hookimpl",
    "load_pretrained",
    "load_processor",
    "make_stop",
    "mark_phase",
    "model_identity",
    "prefill_and_decode",
    "results_frame",
    "select_per_segment",
    "split_budget",
    "stack_segments",
    "torch_dtype",
]


def __getattr__(name: str) -> object:
    """Lazy exports (``_LAZY``): the module is imported when one of its names is first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
