"""`tokenbench show`: one sample's image with each strategy's kept visual tokens on it.

Runs the chosen strategies on ONE sample through the adapter (the same loading and
checks as ``tokenbench compare``: :func:`tokenbench.compare.prepare`) and draws one
panel per strategy, budget and reduction stage (``vision``, ``llm@K``): dropped grid
cells dimmed, kept cells outlined, and, where the task knows them
(:meth:`tokenbench.Task.relevant_tokens`), the cells the answer depends on outlined in another colour. Each panel names the stage,
the tokens kept and the prediction; the figure names the question and the answers.

A sample of several segments (:class:`tokenbench.Segment`: AnyRes base and crops,
tiles and thumbnail, several images, video frames) is drawn segment by segment, side by
side in each panel, each on its own image (a frame segment on the frame it covers,
from the frames the adapter samples) and labelled with its kind and tokens kept.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokenbench.cli_options import add_budget_options, add_model_options, model_request, quiet_weight_loading
from tokenbench.errors import UsageError

KEPT_COLOUR = "#00d5ff"
RELEVANT_COLOUR = "#ff2d8a"


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "show",
        help="draw each strategy's kept visual tokens on one sample's image (PNG)",
        description="Run strategies on one sample and draw the tokens each keeps at each stage.",
    )
    s.add_argument("--strategies", required=True, help="comma list; parameters as name:key=value")
    s.add_argument("--sample", required=True, metavar="ID", help="the sample id (as in the per-sample records)")
    s.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure")
    add_budget_options(s)
    add_model_options(s)
    s.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from tokenbench.plots import require_matplotlib

    require_matplotlib("tokenbench show")
    quiet_weight_loading()
    path = show(model_request(args), args.sample, args.out)
    print(f"tokenbench: wrote {path}", file=sys.stderr)
    return 0


def show(request: Any, sample_id: str, out: str | Path) -> Path:
    """Run ``request``'s strategies on one sample and write the figure to ``out``."""
    from tokenbench.budget import FULL, Budget
    from tokenbench.compare import load_options, prepare
    from tokenbench.registry import get_registry

    task, samples, strategies, adapter_cls, model = prepare(request, get_registry())
    by_id = {s.id: s for s in samples}
    if sample_id not in by_id:
        raise UsageError(unknown_sample_message(sample_id, task.name, [s.id for s in samples]))
    sample = by_id[sample_id]
    wanted = {s.name for s in request.strategies}
    strategies = [s for s in strategies if s.name in wanted]
    adapter = adapter_cls.load(model.location, device=request.device, dtype=request.dtype, **load_options(request))
    prompt = task.prompt(sample, adapter.family)
    panels = []
    for strategy in strategies:
        for budget in [FULL] if strategy.keeps_all else (request.budgets or [Budget("default")]):
            result = adapter.generate(
                [sample], [prompt], strategy, budget, seed=request.seed, max_new_tokens=task.max_new_tokens, stop_strings=task.stop_strings
            )[0]
            panels.append((strategy.label, budget.label, result, task.score(sample, result.prediction)))
    frames = sample.load_video(num_frames=getattr(adapter, "video_frames", None), fps=getattr(adapter, "video_fps", None)) if sample.has_video else []
    return draw(sample, panels, out, relevant=lambda grid: task.relevant_tokens(sample, grid) or [], frames=frames)


def unknown_sample_message(sample_id: str, task: str, ids: Sequence[str]) -> str:
    """What ``--sample`` may be: close ids, the id at a position given as a number, and examples.

    >>> ids = [f"shapes-{i:05d}" for i in range(1200)]
    >>> unknown_sample_message("3", "shapes", ids)
    "unknown sample '3' in task shapes: --sample takes an id, not a position; the sample at position 3 is 'shapes-00003' (1200 samples, first ...)"
    >>> unknown_sample_message("shapes-3", "shapes", ids)
    "unknown sample 'shapes-3' in task shapes; did you mean 'shapes-00003'? (1200 samples, first 'shapes-00000', last 'shapes-01199')"
    """
    import difflib
    import re

    def unpadded(text: str) -> str:  # 'shapes-00003' and 'shapes-3' are the same number
        return re.sub(r"\d+", lambda m: str(int(m.group())), text)

    wanted = unpadded(sample_id)
    close = [i for i in ids if unpadded(i) == wanted][:3] or difflib.get_close_matches(sample_id, ids, n=3, cutoff=0.6)
    if sample_id.isdigit() and int(sample_id) < len(ids):
        hint = f": --sample takes an id, not a position; the sample at position {int(sample_id)} is {ids[int(sample_id)]!r}"
    elif close:
        hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = ""
    examples = f", first {ids[0]!r}, last {ids[-1]!r}" if len(ids) > 1 else f": {ids[0]!r}" if ids else ""
    return f"unknown sample {sample_id!r} in task {task}{hint} ({len(ids)} sample{'' if len(ids) == 1 else 's'}{examples})"


def _crop_to_grid(image: Any, grid: tuple[int, int], size: int = 384) -> Any:
    """The image centre-cropped to the token grid's aspect ratio (what a CLIP processor sees)."""
    h, w = grid
    W, H = image.size
    if W * h > H * w:
        new_w = round(H * w / h)
        image = image.crop(((W - new_w) // 2, 0, (W - new_w) // 2 + new_w, H))
    elif W * h < H * w:
        new_h = round(W * h / w)
        image = image.crop((0, (H - new_h) // 2, W, (H - new_h) // 2 + new_h))
    scale = size / max(image.size)
    return image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))))


def stages(result: Any) -> list[tuple[str, list[int]]]:
    """(stage label, kept indices) per stage, or one "all tokens" stage when nothing was dropped."""
    if not result.kept:
        return [("all tokens", list(range(result.num_visual)))]
    return [(label, list(kept)) for label, kept in result.kept.items()]


def segment_images(images: Sequence[Any], segments: Sequence[Any], frames: Sequence[Any] = ()) -> list[Any]:
    """The picture each segment is drawn on: its source image (of the sample's ``images``), or for a
    frame segment the frame it covers.

    Frame segments of one video split ``frames`` evenly (a Qwen temporal patch covers two
    frames: it is drawn on the first).
    """
    video = [s for s in segments if s.source >= len(images)]
    out = []
    for seg in segments:
        if seg.source < len(images):
            out.append(images[seg.source])
        else:
            j = video.index(seg)
            out.append(frames[min(len(frames) - 1, j * len(frames) // max(1, len(video)))] if frames else images[0] if images else None)
    return out


def draw(
    sample: Any,
    panels: Sequence[tuple[str, str, Any, float]],
    out: str | Path,
    relevant: Callable[[tuple[int, int]], list[int]] = lambda grid: [],
    frames: Sequence[Any] = (),
) -> Path:
    """One panel per (strategy, budget, stage); ``relevant(grid)``: the cells the task says the answer depends on.

    ``frames``: the video frames the adapter sampled, for samples with a video.
    """
    import numpy as np
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from tokenbench.plots import new_figure
    from tokenbench.text_table import shorten

    cells = [(label, budget, res, score, stage, kept) for label, budget, res, score in panels for stage, kept in stages(res)]
    if not cells:
        raise UsageError("no panels to draw: none of the strategies ran")
    ncols = min(4, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig = new_figure(3.6 * ncols, 4.1 * nrows + 0.9)
    images = sample.load_images()  # read once, drawn in every panel
    for k, (label, budget, res, score, stage, kept) in enumerate(cells):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        keep = set(kept)
        segments = res.all_segments
        pictures = segment_images(images, segments, frames)
        x0, height = 0.0, max(seg.grid[0] for seg in segments)
        present = (getattr(res, "segment_counts", None) or {}).get(stage)  # merged tokens included, by their donors
        for j, (seg, picture) in enumerate(zip(segments, pictures)):
            h, w = seg.grid
            local = {i - seg.start for i in keep if seg.start <= i < seg.stop}
            if picture is not None:
                ax.imshow(np.asarray(_crop_to_grid(picture, (h, w))), extent=(x0, x0 + w, h, 0), interpolation="bilinear")
            shade = np.zeros((h, w, 4))
            for i in range(h * w):
                if i not in local:
                    shade[i // w, i % w] = (0, 0, 0, 0.72)
            ax.imshow(shade, extent=(x0, x0 + w, h, 0), interpolation="nearest")
            ax.add_collection(
                PatchCollection([Rectangle((x0 + i % w, i // w), 1, 1) for i in sorted(local)], facecolor="none", edgecolor=KEPT_COLOUR, linewidth=0.6)
            )
            if len(segments) > 1:
                ax.text(x0, h + 0.2, f"{seg.kind} {seg.source}: {present[j] if present else len(local)}/{seg.count}", fontsize=5, va="top")
            x0 += w + (1 if len(segments) > 1 else 0)
        h, w = res.grid
        relevant_here = relevant((h, w)) if len(segments) == 1 else []
        if relevant_here:
            ax.add_collection(
                PatchCollection([Rectangle((i % w, i // w), 1, 1) for i in relevant_here], facecolor="none", edgecolor=RELEVANT_COLOUR, linewidth=1.8)
            )
        # merged tokens present after this stage: made here, or made earlier and kept
        merged = (res.merged.get(stage, 0) if res.merged else 0) + (getattr(res, "kept_merged", None) or {}).get(stage, 0)
        extra = f" +{merged} merged" if merged else ""
        rel = f"; relevant kept {sum(i in keep for i in relevant_here)}/{len(relevant_here)}" if relevant_here else ""
        verdict = "correct" if score >= 1 else "wrong" if score <= 0 else f"score {score:.2f}"
        ax.set_title(
            f"{shorten(label, 30)} @ {budget} — {stage}\n{len(keep)}/{res.num_visual} kept{extra}{rel}\npred: {shorten(repr(res.prediction), 32)} ({verdict})",
            fontsize=8,
        )
        ax.set_xlim(0, x0 if len(segments) > 1 else w)
        ax.set_ylim(height + (1.2 if len(segments) > 1 else 0), 0)
        ax.set_xticks([])
        ax.set_yticks([])
    answers = " / ".join(sample.answers)
    fig.suptitle(f"{sample.id}: {shorten(sample.question, 40 * ncols)}\nanswer: {shorten(answers, 40 * ncols)}", fontsize=10)
    handles = [Line2D([], [], color=KEPT_COLOUR, lw=1.5, label="kept token (outlined); dropped tokens dimmed")]
    if any(len(c[2].all_segments) == 1 and relevant(c[2].grid) for c in cells[:1]):
        handles.append(Line2D([], [], color=RELEVANT_COLOUR, lw=2, label="cells the answer depends on"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.93))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
