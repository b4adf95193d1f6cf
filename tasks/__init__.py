"""The built-in tasks, registered through the same entry point a third-party package uses."""

from __future__ import annotations

from tokenbench.hookspecs import Register, hookimpl


@hookimpl
def register_tasks(register: Register) -> None:
    register(
        "tokenbench.tasks.jsonl:JsonlTask",
        name="jsonl",
        description="Your own data: one JSON object a line (id, image, question, answers[, choices, kind]).",
    )
