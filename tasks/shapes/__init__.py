"""The ``shapes`` task plugin: the embedded reference task and its ``oracle`` strategy.

Registered through its own entry point, as a third-party task package would be; the
oracle is registered by this plugin (not as a general strategy) because only a task
that knows which cells each answer depends on can define it.
"""

from __future__ import annotations

from tokenbench.hookspecs import Register, hookimpl


@hookimpl
def register_tasks(register: Register) -> None:
    register(
        "tokenbench.tasks.shapes.task:ShapesTask",
        name="shapes",
        description="Procedural shapes VQA (attribute, existence, count, relation), 1,200 questions; the default task.",
        default=True,
    )


@hookimpl
def register_strategies(register: Register) -> None:
    register(
        "tokenbench.tasks.shapes.oracle:Oracle",
        name="oracle",
        description="shapes only: keeps the cells each answer depends on first (the upper bound at a budget).",
    )
