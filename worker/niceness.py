"""``celery -A worker worker --nice N``: run a pool at a lower CPU priority.

On a host shared by the page and email pools, an email backlog can keep the CPU busy
while a page waits to be scheduled (see README, Benchmarks). The Procfile and
docker-compose.yml start the email pool with ``--nice 10`` so the scheduler favours
pages, as the queues already do.
"""

from __future__ import annotations

import os
from typing import Any

import click
from celery import Celery, bootsteps


class Niceness(bootsteps.Step):  # type: ignore[misc]
    """Lowers the worker's priority before its pool threads start (they inherit it)."""

    def __init__(self, parent: Any, nice: int = 0, **options: Any) -> None:
        if nice:
            os.nice(nice)
        super().__init__(parent, **options)


def install(app: Celery) -> None:
    """Add the ``--nice`` worker option to ``app``."""
    app.user_options["worker"].add(
        click.Option(
            ["--nice"],
            type=click.IntRange(0, 19),
            default=0,
            show_default=True,
            help="Lower this worker's CPU priority by N (as nice(1)); the Procfile gives "
            "the email pool 10 so pages win the CPU.",
        )
    )
    app.steps["worker"].add(Niceness)
