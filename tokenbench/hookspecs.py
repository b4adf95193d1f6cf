"""The plugin contract: one hook per plugin family, each receiving a ``register`` callable.

A plugin module (named by an entry point in the ``tokenbench.strategies``,
``tokenbench.adapters``, ``tokenbench.tasks`` or ``tokenbench.models`` group)
implements any of these::

    import tokenbench

    @tokenbench.hookimpl
    def register_strategies(register):
        register("mypkg.strategy:MyStrategy", name="mine", description="Keeps what I like.")

``register`` takes either the class itself or a lazy ``"module:Class"`` reference.
A lazy reference (with ``name`` and ``description``) keeps ``tokenbench list`` fast and
free of heavy imports: the module is imported only when the entry is used.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

PROJECT = "tokenbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callable a plugin receives: ``register(target, *, name=None, description=None, **meta)``."""

    def __call__(self, target: Any, *, name: str | None = None, description: str | None = None, **meta: Any) -> None: ...


@hookspec
def register_strategies(register: Register) -> None:
    """Register reduction strategies (subclasses of :class:`tokenbench.Strategy`)."""


@hookspec
def register_adapters(register: Register) -> None:
    """Register model adapters (subclasses of :class:`tokenbench.Adapter`); pass ``model_types=(...)``."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register tasks (subclasses of :class:`tokenbench.Task`); ``default=True`` marks the task run without ``--task``."""


@hookspec
def register_models(register: Register) -> None:
    """Register named checkpoints (subclasses of :class:`tokenbench.NamedModel`); ``default=True`` marks the model run without ``--model``."""
