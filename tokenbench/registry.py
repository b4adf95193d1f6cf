"""A lazy, fault-isolating registry of strategies, adapters and tasks.

Plugins are found through entry points (groups ``tokenbench.strategies``,
``tokenbench.adapters``, ``tokenbench.tasks``, ``tokenbench.models``), registered with pluggy, and asked to
register their entries. A plugin that fails to import, has a malformed hook, raises,
registers a duplicate name or something of the wrong kind is recorded as a
:class:`PluginProblem` naming the plugin, the hook and the reason; the other plugins
still load. Entries registered as ``"module:Class"`` strings are imported only on use,
so listing needs neither torch nor transformers.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import pluggy

from tokenbench import hookspecs
from tokenbench.errors import PluginError, UnknownNameError

Family = Literal["strategies", "adapters", "tasks", "models"]
FAMILIES: tuple[Family, ...] = ("strategies", "adapters", "tasks", "models")
_HOOKS: dict[Family, str] = {
    "strategies": "register_strategies",
    "adapters": "register_adapters",
    "tasks": "register_tasks",
    "models": "register_models",
}
_BASES: dict[Family, str] = {
    "strategies": "tokenbench.strategy:Strategy",
    "adapters": "tokenbench.adapter:Adapter",
    "tasks": "tokenbench.task:Task",
    "models": "tokenbench.named_model:NamedModel",
}
_SINGULAR = {"strategies": "strategy", "adapters": "adapter", "tasks": "task", "models": "model"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


@dataclass(frozen=True)
class PluginProblem:
    plugin: str
    hook: str | None
    reason: str

    def __str__(self) -> str:
        where = f", hook {self.hook}" if self.hook else ""
        return f"plugin {self.plugin!r}{where}: {self.reason}"


@dataclass
class Entry:
    """One registered strategy, adapter or task."""

    family: Family
    name: str
    description: str
    target: Any
    plugin: str
    distribution: str
    version: str
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> type[Any]:
        """Import (if lazy) and return the registered class, checking its base class."""
        obj = self.target
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                raise PluginError(
                    f"{_SINGULAR[self.family]} {self.name!r} from plugin {self.plugin!r}: cannot import {self.target!r} ({type(exc).__name__}: {exc})"
                ) from None
        base = _load_base(self.family)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"{_SINGULAR[self.family]} {self.name!r} from plugin {self.plugin!r} is {obj!r}, not a subclass of tokenbench.{base.__name__}")
        if isinstance(self.target, str):  # a lazy entry's listing metadata must be the class's own
            for attr, registered in (("name", self.name), ("description", self.description)):
                declared = getattr(obj, attr, "")
                if declared and declared != registered:
                    raise PluginError(
                        f"{_SINGULAR[self.family]} {self.name!r} from plugin {self.plugin!r}: registered with "
                        f"{attr} {registered!r} but {self.target} declares {declared!r}; make them equal"
                    )
        self.target = obj
        return obj


def _load_base(family: Family) -> type:
    module_name, _, attr = _BASES[family].partition(":")
    base: type = getattr(importlib.import_module(module_name), attr)
    return base


class Registry:
    """All plugins' entries, by family and name."""

    def __init__(self) -> None:
        self.entries: dict[Family, dict[str, Entry]] = {f: {} for f in FAMILIES}
        self.problems: list[PluginProblem] = []
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_entry_points(cls) -> Registry:
        reg = cls()
        seen: set[str] = set()
        for family in FAMILIES:
            for ep in metadata.entry_points(group=f"tokenbench.{family}"):
                if ep.value in seen:
                    continue
                seen.add(ep.value)
                dist = ep.dist.name if ep.dist is not None else "?"
                version = ep.dist.version if ep.dist is not None else "?"
                plugin = ep.name if dist == "?" else f"{dist}:{ep.name}"
                try:
                    module = ep.load()
                except Exception as exc:  # noqa: BLE001 - isolate any plugin failure
                    reg.problems.append(PluginProblem(plugin, None, f"failed to import {ep.value!r} ({type(exc).__name__}: {exc})"))
                    continue
                reg.add_plugin(module, plugin, distribution=dist, version=version)
        reg.collect()
        return reg

    def add_plugin(self, obj: object, plugin: str, *, distribution: str = "?", version: str = "?", collect: bool = False) -> None:
        """Register a plugin object (module or class with hook implementations).

        With ``collect=True`` its hooks run at once (for plugins added after loading).
        """
        try:
            self._pm.register(obj, name=plugin)
        except pluggy.PluginValidationError as exc:
            self.problems.append(PluginProblem(plugin, _hook_in(str(exc)), f"{exc}; the hooks are {_signatures()}"))
            return
        except ValueError as exc:
            self.problems.append(PluginProblem(plugin, None, str(exc).splitlines()[0]))
            return
        self._dists[plugin] = (distribution, version)
        if collect:
            self.collect(only=plugin)

    def collect(self, only: str | None = None) -> None:
        """Ask every registered plugin (or just ``only``) to register its entries, one at a time."""
        for family in FAMILIES:
            hook_name = _HOOKS[family]
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                if only is not None and plugin != only:
                    continue
                dist, version = self._dists.get(plugin, ("?", "?"))
                register = self._make_register(family, plugin, dist, version)
                try:
                    impl.function(register=register)
                except Exception as exc:  # noqa: BLE001
                    self.problems.append(PluginProblem(plugin, hook_name, f"raised {type(exc).__name__}: {exc}"))

    def _make_register(self, family: Family, plugin: str, dist: str, version: str) -> Callable[..., None]:
        hook_name = _HOOKS[family]

        def register(target: Any, *, name: str | None = None, description: str | None = None, **meta: Any) -> None:
            if isinstance(target, str):
                if ":" not in target or not name or description is None:
                    self.problems.append(PluginProblem(plugin, hook_name, f"lazy entry {target!r} needs 'module:Class', name= and description="))
                    return
            else:
                base = _load_base(family)
                if not (isinstance(target, type) and issubclass(target, base)):
                    self.problems.append(PluginProblem(plugin, hook_name, f"registered {target!r}, which is not a subclass of tokenbench.{base.__name__}"))
                    return
                name = name or getattr(target, "name", "")
                if description is None:
                    description = getattr(target, "description", "") or (target.__doc__ or "").strip().split("\n")[0]
            if not name or not _NAME.match(name):
                self.problems.append(
                    PluginProblem(plugin, hook_name, f"invalid {_SINGULAR[family]} name {name!r} (use lower-case letters, digits, '-', '_', '.')")
                )
                return
            existing = self.entries[family].get(name)
            if existing is not None:
                self.problems.append(
                    PluginProblem(plugin, hook_name, f"duplicate {_SINGULAR[family]} name {name!r}, already registered by plugin {existing.plugin!r}; ignored")
                )
                return
            claimed = self.default(family) if meta.get("default") else None
            if claimed is not None:
                self.problems.append(
                    PluginProblem(
                        plugin,
                        hook_name,
                        f"{_SINGULAR[family]} {name!r} claims to be the default, "
                        f"but {claimed!r} from plugin {self.entries[family][claimed].plugin!r} already is; registered as a non-default",
                    )
                )
                meta = {k: v for k, v in meta.items() if k != "default"}
            self.entries[family][name] = Entry(family, name, description or "", target, plugin, dist, version, dict(meta))

        return register

    # -- lookup --------------------------------------------------------------------
    def names(self, family: Family) -> list[str]:
        return sorted(self.entries[family])

    def entry(self, family: Family, name: str) -> Entry:
        try:
            return self.entries[family][name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(_SINGULAR[family], name, self.names(family))) from None

    def load(self, family: Family, name: str) -> type[Any]:
        return self.entry(family, name).load()

    def default(self, family: Family) -> str | None:
        """The name of the entry registered with ``default=True`` (the task or model run when none is named)."""
        return next((n for n, e in self.entries[family].items() if e.meta.get("default")), None)


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown strategy 'fastvv'; did you mean 'fastv'?`` (or the list of valid names)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "available: " + (", ".join(known) or "none")
    return f"unknown {kind} {name!r}; {hint}"


def _hook_in(message: str) -> str | None:
    m = re.search(r"register_(strategies|adapters|tasks)", message)
    return m.group(0) if m else None


def _signatures() -> str:
    return "; ".join(f"{hook}(register)" for hook in _HOOKS.values())


_DEFAULT: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry built from installed entry points (cached)."""
    global _DEFAULT
    if _DEFAULT is None or refresh:
        _DEFAULT = Registry.from_entry_points()
    return _DEFAULT
