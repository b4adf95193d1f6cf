"""A complete third-party tokenbench plugin: one strategy class and one hook.

The hook registers the class lazily, as ``"module:Class"`` with its name and
description, so ``tokenbench list`` never imports torch; the class module loads only
when the strategy runs. It imports only ``tokenbench`` (the public API) and torch.
"""

from __future__ import annotations

import tokenbench


@tokenbench.hookimpl
def register_strategies(register: tokenbench.Register) -> None:
    register(
        "tokenbench_centre_crop.strategy:CentreCrop",
        name="centre-crop",
        description="Keeps the b visual tokens nearest the image centre (example plugin).",
    )
