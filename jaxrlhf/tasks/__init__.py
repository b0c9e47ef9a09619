"""Built-in tasks, by name: ``get_task("sentiment")``, ``get_task("imdb_sentiment")``,
``get_task("arithmetic")``.

Each entry of :data:`TASKS` builds a :class:`jaxrlhf.tasks.base.Task`. Adding a task is one
module and one line here.
"""
from __future__ import annotations

from collections.abc import Callable

from jaxrlhf.tasks import arithmetic, imdb, sentiment
from jaxrlhf.tasks.base import Task

TASKS: dict[str, Callable[[], Task]] = {
    "sentiment": sentiment.SentimentTask,
    "imdb_sentiment": imdb.load_task,
    "arithmetic": arithmetic.ArithmeticTask,
}


def get_task(name: str) -> Task:
    """The task called ``name`` (its assets built or read from the cache on first use)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; the built-in tasks are {sorted(TASKS)}")
    return TASKS[name]()
