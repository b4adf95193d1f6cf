"""Scaling a method's published layer schedule to another model depth, shared by the layer-scheduled strategies.

SparseVLM and PyramidDrop publish their pruning layers for a 32-layer LLaMA; tokenbench
runs them on any depth by one rule: scale each layer by ``L / 32`` and round half up,
then make the layers strictly increasing, at least ``lowest`` and at most ``L − 2`` (a
pruned layer needs a layer after it); reference stages that still land on one layer
collapse into it, which takes the *last* of them (its smaller count).
"""

from __future__ import annotations

import math


def round_half_up(x: float) -> int:
    """``2.5 -> 3`` (Python's ``round`` goes to the even neighbour).

    >>> round_half_up(2.5), round_half_up(3.5), round_half_up(-0.5)
    (3, 4, 0)
    """
    return int(math.floor(x + 0.5))


def scale_layers(reference: tuple[int, ...], reference_depth: int, num_layers: int, lowest: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The layers for ``num_layers``, and for each the index of the last reference stage it holds.

    >>> scale_layers((2, 6, 15), 32, 40)
    ((3, 8, 19), (0, 1, 2))
    >>> scale_layers((2, 6, 15), 32, 3)
    ((0, 1), (0, 2))
    >>> scale_layers((8, 16, 24), 32, 4, lowest=1)
    ((1, 2), (0, 2))
    """
    last = num_layers - 2
    layers: list[int] = []
    source: list[int] = []
    for i, ref in enumerate(reference):
        layer = max(round_half_up(ref * num_layers / reference_depth), lowest, layers[-1] + 1 if layers else lowest)
        layer = min(layer, last)
        if layers and layer == layers[-1]:
            source[-1] = i  # collapsed: the later (smaller) count wins
        else:
            layers.append(layer)
            source.append(i)
    return tuple(layers), tuple(source)
