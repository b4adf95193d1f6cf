"""Where a number came from: library versions, device, threads."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

_LIBRARIES = ("tokenbench", "torch", "transformers", "fvcore", "numpy", "scipy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions, device name, thread count and processor, recorded with every result."""
    import torch

    env: dict[str, Any] = dict(library_versions())
    env["threads"] = torch.get_num_threads()
    env["processor"] = platform.processor() or platform.machine()
    env["device"] = device
    env["device_name"] = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    return env
