"""Plugin loading: faults are isolated and reported by plugin, hook and reason."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import tokenbench
from tokenbench.registry import Registry, unknown_name_message


class Good(tokenbench.Strategy):
    name = "good"
    description = "keeps the first b"

    def schedule(self, model):
        return (tokenbench.StageSpec.vision(),)

    def select(self, ctx):
        return tokenbench.Selection(keep=torch.arange(ctx.budget))


def _plugin(**hooks: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: tokenbench.hookimpl(v) for k, v in hooks.items()})


def _registry(*plugins: tuple[str, object]) -> Registry:
    reg = Registry()
    for name, obj in plugins:
        reg.add_plugin(obj, name)
    reg.collect()
    return reg


def test_class_and_lazy_entries_register() -> None:
    reg = _registry(
        ("p1", _plugin(register_strategies=lambda register: register(Good))),
        (
            "p2",
            _plugin(
                register_strategies=lambda register: register("tokenbench.strategies.random_drop:RandomDrop", name="random", description=RANDOM_DESCRIPTION)
            ),
        ),
    )
    assert reg.names("strategies") == ["good", "random"]
    assert reg.load("strategies", "random").__name__ == "RandomDrop"
    assert reg.problems == []


RANDOM_DESCRIPTION = "Keeps b visual tokens drawn uniformly, seeded per sample (control)."


@pytest.mark.parametrize(("name", "description", "attr"), [("rnd", RANDOM_DESCRIPTION, "name"), ("random", "random", "description")])
def test_a_lazy_entry_whose_listing_disagrees_with_its_class_fails_on_load(name: str, description: str, attr: str) -> None:
    """A lazy entry is listed without importing its class; the class's own name and description must match."""
    reg = _registry(
        ("lazy", _plugin(register_strategies=lambda register: register("tokenbench.strategies.random_drop:RandomDrop", name=name, description=description)))
    )
    with pytest.raises(tokenbench.PluginError, match=f"strategy {name!r} from plugin 'lazy': registered with {attr} .* but .*RandomDrop declares"):
        reg.load("strategies", name)


def test_every_installed_entry_loads_with_the_listing_it_was_registered_with() -> None:
    """The built-ins are listed lazily (no torch for ``tokenbench list``): each one's listing is its class's own."""
    reg = tokenbench.get_registry()
    for family in ("strategies", "adapters", "tasks", "models"):
        for name in reg.names(family):
            cls = reg.load(family, name)
            assert (cls.name, cls.description) == (name, reg.entry(family, name).description)


def test_duplicate_name_is_reported_with_both_plugins_and_the_first_wins() -> None:
    reg = _registry(
        ("first", _plugin(register_strategies=lambda register: register(Good))), ("second", _plugin(register_strategies=lambda register: register(Good)))
    )
    assert reg.entry("strategies", "good").plugin == "first"
    assert [str(p) for p in reg.problems] == [
        "plugin 'second', hook register_strategies: duplicate strategy name 'good', already registered by plugin 'first'; ignored"
    ]


def test_registering_something_that_is_not_a_strategy_is_reported() -> None:
    reg = _registry(("bad", _plugin(register_strategies=lambda register: register(dict))), ("ok", _plugin(register_strategies=lambda register: register(Good))))
    assert reg.names("strategies") == ["good"]
    assert "plugin 'bad', hook register_strategies: registered <class 'dict'>, which is not a subclass of tokenbench.Strategy" in str(reg.problems[0])


def test_a_lazy_entry_of_the_wrong_kind_fails_on_load_naming_it() -> None:
    reg = _registry(
        ("lazy", _plugin(register_tasks=lambda register: register("tokenbench.strategies.random_drop:RandomDrop", name="nottask", description="x")))
    )
    with pytest.raises(tokenbench.PluginError, match="task 'nottask' from plugin 'lazy' is .*RandomDrop.*not a subclass of tokenbench.Task"):
        reg.load("tasks", "nottask")


def test_a_hook_that_raises_is_isolated() -> None:
    def boom(register):
        raise RuntimeError("kaput")

    reg = _registry(("boom", _plugin(register_strategies=boom)), ("ok", _plugin(register_strategies=lambda register: register(Good))))
    assert reg.names("strategies") == ["good"]
    assert str(reg.problems[0]) == "plugin 'boom', hook register_strategies: raised RuntimeError: kaput"


def test_a_hook_with_the_wrong_signature_names_hook_and_signature() -> None:
    reg = _registry(("sig", _plugin(register_strategies=lambda registry: None)))
    text = str(reg.problems[0])
    assert "plugin 'sig', hook register_strategies" in text and "register_strategies(register)" in text


def test_unknown_name_suggests_close_matches() -> None:
    assert unknown_name_message("strategy", "fastvv", ["fastv", "random"]) == "unknown strategy 'fastvv'; did you mean 'fastv'?"
    assert unknown_name_message("task", "zzz", ["gqa", "pope"]) == "unknown task 'zzz'; available: gqa, pope"


def _broken_dist(root: Path) -> Path:
    """An installed distribution (dist-info on sys.path) whose plugin module raises on import."""
    (root / "broken_plugin.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    info = root / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tokenbench.strategies]\nbroken = broken_plugin\n")
    return root


def _cli(args: list[str], pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "tokenbench.cli", *args], capture_output=True, text=True, env=env, timeout=120, cwd=Path(__file__).parent)


def test_a_plugin_that_fails_to_import_is_reported_and_list_still_works(tmp_path: Path) -> None:
    proc = _cli(["list", "strategies"], _broken_dist(tmp_path))
    assert proc.returncode == 0
    assert "plugin 'broken-plugin:broken': failed to import 'broken_plugin' (ImportError: this plugin is broken on purpose)" in proc.stderr
    assert "random" in proc.stdout and "baseline" in proc.stdout


def test_strict_plugins_turns_a_broken_plugin_into_a_failure(tmp_path: Path) -> None:
    proc = _cli(["--strict-plugins", "list"], _broken_dist(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "tokenbench: error: 1 plugin problem(s) above and --strict-plugins is set"


def test_listing_does_not_import_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tokenbench.cli import main
        main(["list"])
        assert "torch" not in sys.modules, "tokenbench list imported torch"
        assert "transformers" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr
    assert "attention-only" in proc.stdout and "tokenbench" in proc.stdout
