"""Built-in verifiable reasoning tasks and tiny local models.

Each task is a `Task` with a seeded generator `make_rows(n, seed, difficulty,
split)`, a TRL-signature reward `reward(prompts, completions, answer, **kw)`
and a description. Train and held-out problems never overlap (split by a hash
of the problem). `get_task("arithmetic")` or `TASKS["countdown"]`.
"""

from __future__ import annotations

from . import arithmetic, chain, countdown, linear, shapes, shop
from .base import Task, extract_answer, normalize_answer

TASKS: dict[str, Task] = {task.name: task for task in (arithmetic.TASK, linear.TASK, countdown.TASK, chain.TASK,
                                                       shapes.TASK, shop.TASK)}


def get_task(name: str | Task) -> Task:
    """The built-in task called `name` (a `Task` passes through), with a clear error listing the choices."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Task", "get_task", "extract_answer", "normalize_answer"]
