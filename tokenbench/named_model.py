"""Checkpoints known by a short name: ``--model NAME`` instead of a path or a hub id.

A plugin registers a :class:`NamedModel` subclass with the ``register_models`` hook
(entry-point group ``tokenbench.models``); ``default=True`` makes it the model a
command runs when no ``--model`` is given. Results record the name, not the path, so
the same checkpoint gives the same run keys on every install. The embedded reference
model is registered this way by ``tokenbench.reference``, exactly as a third-party
package would register its own.

>>> class Tiny(NamedModel):
...     name = "tiny"
...     description = "A checkpoint on a shared disk."
...     @classmethod
...     def location(cls) -> str:
...         return "/models/tiny"
>>> Tiny.location()
'/models/tiny'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class NamedModel(ABC):
    """Base class of a named checkpoint: set ``name`` and ``description``, implement :meth:`location`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def location(cls) -> str:
        """The hub id or local path the adapters load (raise :class:`tokenbench.ModelLoadError` if it is missing)."""
