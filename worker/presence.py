"""Each worker says it is up every ``REPORT_EVERY_SECONDS`` (a worker bootstep on Celery's
timer), so ``/readyz`` and the metrics know whether anyone is consuming. A worker that
stops on purpose says so; one that dies simply stops reporting."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import redis
from celery import Celery, bootsteps

from worker.engine.runtime import engine
from worker.engine.workers import REPORT_EVERY_SECONDS

logger = logging.getLogger(__name__)


class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **options: Any) -> None:
        self.timer_ref: Any = None
        super().__init__(parent, **options)

    def start(self, parent: Any) -> None:
        self.report(parent)
        self.timer_ref = parent.timer.call_repeatedly(
            REPORT_EVERY_SECONDS, self.report, (parent,), priority=10
        )

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
        with contextlib.suppress(redis.RedisError):  # then it simply stops being seen
            engine().workers.gone(parent.hostname)

    def report(self, parent: Any) -> None:
        queues = sorted(parent.app.amqp.queues.consume_from)
        try:
            engine().workers.report(parent.hostname, queues, os.getpid())
        except redis.RedisError as exc:
            logger.warning("cannot report this worker as up (redis unavailable): %s", exc)


def install(app: Celery) -> None:
    """Every worker of ``app`` reports that it is up."""
    app.steps["worker"].add(Presence)
