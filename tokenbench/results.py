"""What a comparison produced: one :class:`RunResult` per strategy and budget, in a :class:`Comparison`.

These are plain data: :mod:`tokenbench.compare` builds them from a fresh run,
:mod:`tokenbench.stored` from a results store, and the outputs (tables, plots, the
gate, leaderboards) read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenbench.budget import Budget
from tokenbench.store import SampleRecord
from tokenbench.strategy import strategy_label


@dataclass
class RunResult:
    strategy: str
    params: dict[str, Any]
    budget: Budget
    run_id: str
    config: dict[str, Any]
    records: list[SampleRecord]
    flops: dict[str, float] | None = None
    resumed: int = 0

    defaults: dict[str, Any] = field(default_factory=dict)
    #: the timed loop's summary (``latency_ms``, ``peak_memory_mb``, settings, environment), if timed
    timing: dict[str, Any] | None = None

    @property
    def position_policy(self) -> str:
        """The run's position ids after reduction (runs stored before the policy was recorded used ``original``)."""
        return str(self.config.get("position_policy", "original"))

    @property
    def label(self) -> str:
        """The strategy with the parameters that differ from its defaults, as tables show it."""
        return strategy_label(self.strategy, self.params, self.defaults)


@dataclass
class Comparison:
    model: dict[str, Any]
    task: dict[str, Any]
    metric_kind: str
    metric_name: str
    environment: dict[str, Any]
    runs: list[RunResult]
    sample_ids: list[str]
    task_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
