"""Shared fixtures: tiny checkpoints built once per session, no downloads."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `python -m pytest` puts the working directory first on sys.path. From the repository
# root that makes the source folder tokenbench/ shadow the installed package, which alone
# holds the mapped plugin folders (tokenbench.strategies, .adapters, .tasks, .reference).
_REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenbench.testing import tiny_llava_checkpoint

    return tiny_llava_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llava", image_size=48, patch_size=8, layers=4)


@pytest.fixture(scope="session")
def jsonl_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenbench.testing import write_jsonl_task

    return write_jsonl_task(tmp_path_factory.mktemp("task"), n=6, size=48)


@pytest.fixture(scope="session", autouse=True)
def _threads_independent_of_the_load() -> Iterator[None]:
    """compare and gate choose torch's CPU threads from the CPUs other work keeps busy (tokenbench.cli_options.cpu_threads);
    in tests that reads as 0, so every in-process run, module-scoped fixtures included, uses torch's default."""
    import tokenbench.cli_options

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenbench.cli_options, "machine_load", lambda: tokenbench.cli_options.CpuLoad(0.0, "test load {busy}"))
        yield
