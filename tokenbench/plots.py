"""Pareto plots: accuracy against prefill FLOPs (or time to first token), as PNG.

matplotlib is an optional extra (``pip install 'tokenbench[plot]'``). Figures are drawn
on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so plotting
works headless and leaves an interactive session's backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenbench.errors import UsageError
from tokenbench.results import Comparison

MARKERS = "osD^vP<>Xhp*"
INSTALL_HINT = "pip install 'tokenbench[plot]'"


class PlotDependencyError(UsageError):
    """matplotlib is missing: reported in one line (exit status 2) with the install command."""


def require_matplotlib(what: str = "--plot") -> None:
    """Fail early, in one line, when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotDependencyError(f"{what} needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def ttft_ms(row: dict[str, Any]) -> float | None:
    """Median time to first token in ms from a row's ``latency_ms`` (a number or a dict)."""
    lat = row.get("latency_ms")
    if isinstance(lat, dict):
        lat = lat.get("ttft", lat.get("ttft_median"))
    return float(lat) if isinstance(lat, (int, float)) and math.isfinite(lat) else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), by x.

    >>> pareto_front([(1.0, 0.9), (0.5, 0.8), (0.6, 0.7), (0.2, 0.8), (0.1, 0.5)])
    [4, 3, 0]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def model_title(cmp: Comparison) -> str:
    """A registered model's name, a checkpoint folder's name, or the hub id."""
    name = str(cmp.model.get("model", "?"))
    return Path(name).name if Path(name).expanduser().is_dir() else name


def pareto_plot(cmp: Comparison, path: str | Path, *, axis: str = "flops", rows: list[dict[str, Any]] | None = None) -> Path:
    """Write the accuracy/cost Pareto plot of a comparison to ``path`` (PNG).

    ``axis="flops"``: prefill FLOPs relative to the unreduced model (1.0 = baseline);
    ``axis="ttft"``: median time to first token in ms, where rows carry ``latency_ms``.
    One marker and colour per strategy, budgets joined per strategy, accuracy intervals
    as error bars, the baseline as a star, the Pareto-optimal points on a dashed front.
    """
    from tokenbench.report import build_rows

    if axis not in ("flops", "ttft"):
        raise UsageError(f"axis must be 'flops' or 'ttft', got {axis!r}")
    require_matplotlib()
    rows = build_rows(cmp) if rows is None else rows
    xs = [(r["flops_rel_baseline"] if axis == "flops" else ttft_ms(r)) for r in rows]
    if all(x is None for x in xs):
        raise UsageError("--plot: no " + ("FLOPs counts" if axis == "flops" else "timing data") + " in these results to plot against")
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    colours = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    strategies = sorted({r["label"] for r in rows if r["strategy"] != "baseline"})
    points: list[tuple[float, float]] = []
    for i, label in enumerate(strategies):
        pts = sorted((x, r) for x, r in zip(xs, rows) if r["label"] == label and x is not None and _finite(r["accuracy"]))
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [100 * p[1]["accuracy"] for p in pts]
        err = [[100 * (p[1]["accuracy"] - p[1]["ci95"][0]) for p in pts], [100 * (p[1]["ci95"][1] - p[1]["accuracy"]) for p in pts]]
        ax.errorbar(
            x, y, yerr=err, marker=MARKERS[i % len(MARKERS)], color=colours[i % len(colours)], label=label, capsize=3, linewidth=1.3, markersize=6, alpha=0.9
        )
        points += list(zip(x, y))
    for bx, r in zip(xs, rows):
        if r["strategy"] == "baseline" and bx is not None and _finite(r["accuracy"]):
            lo, hi = r["ci95"]
            by = 100 * r["accuracy"]
            ax.errorbar(
                [bx],
                [by],
                yerr=[[by - 100 * lo], [100 * hi - by]],
                marker="*",
                markersize=14,
                color="black",
                capsize=3,
                linestyle="none",
                label="baseline (unreduced)",
            )
            points.append((bx, by))
    front = [points[i] for i in pareto_front(points)]
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="0.35", linewidth=1.0, zorder=0, label="Pareto front")
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=160, facecolors="none", edgecolors="0.2", linewidths=1.2, zorder=3)
    if axis == "flops":
        ax.set_xlabel("prefill FLOPs relative to the unreduced model (×; FLOPs = 2 × multiply-adds, fvcore)")
    else:
        ax.set_xlabel("time to first token (ms, median)")
    ax.set_ylabel(f"accuracy (%, {cmp.metric_name}; bars: 95% CI)")
    ax.set_title(f"{model_title(cmp)} on {cmp.task.get('name')} (n={len(cmp.sample_ids)})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
