"""``celery -A worker worker --nice N`` and ``--idle-priority``: run a pool at a lower CPU
priority.

On a host shared by the page and email pools, an email backlog can keep the CPU busy
while a page waits to be scheduled (see bench/README.md, page_backlog_ratio). ``--nice`` lowers
the weight the scheduler gives the worker, but a page's process that wakes still waits for
the email worker's time slice to end, at every hop of its path (the broker read, the
claim, the POST, the record): about a third of a page's latency under an email backlog.
``--idle-priority`` runs the worker under Linux's ``SCHED_IDLE`` policy instead: it gets
the CPU only when nothing else wants it, and anything that wakes takes the CPU from it at
once. The Procfile and docker-compose.yml start the email pool with it, so pages win the
CPU as they already win the queues. Where ``SCHED_IDLE`` is missing (macOS) it falls
back to the lowest nice value, 19.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click
from celery import Celery, bootsteps

logger = logging.getLogger(__name__)


class Niceness(bootsteps.Step):  # type: ignore[misc]
    """Lowers the worker's priority before its pool threads start (they inherit it)."""

    def __init__(
        self, parent: Any, nice: int = 0, idle_priority: bool = False, **options: Any
    ) -> None:
        if idle_priority:
            if nice:
                logger.warning("--idle-priority given: --nice %d is ignored", nice)
            idle()
        elif nice:
            os.nice(nice)
        super().__init__(parent, **options)


def idle() -> None:
    """Put the calling thread, and every thread it starts after, under ``SCHED_IDLE``
    (else at nice 19, saying why)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        logger.warning("SCHED_IDLE is not available here (%s): running at nice 19", exc)
        os.nice(19 - os.nice(0))


def install(app: Celery) -> None:
    """Add the ``--nice`` and ``--idle-priority`` worker options to ``app``."""
    app.user_options["worker"].add(
        click.Option(
            ["--nice"],
            type=click.IntRange(0, 19),
            default=0,
            show_default=True,
            help="Lower this worker's CPU priority by N (as nice(1)).",
        )
    )
    app.user_options["worker"].add(
        click.Option(
            ["--idle-priority"],
            is_flag=True,
            default=False,
            help="Give this worker the CPU only when nothing else wants it (Linux's "
            "SCHED_IDLE; elsewhere nice 19): the Procfile's email pool, so pages win the CPU. "
            "Overrides --nice.",
        )
    )
    app.steps["worker"].add(Niceness)
