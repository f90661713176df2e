"""What a worker says about itself: that it is up, every ``REPORT_EVERY_SECONDS`` (a
consumer bootstep on Celery's timer, started again with each broker connection), so
``/readyz`` and the metrics know whether anyone is consuming; and which page it holds
through a countdown (a retry's, a deferral's), so the recovery sweep knows whose hands the
message is in if that worker dies with it: kombu hands a dead worker's messages back only
after the visibility timeout, an hour by default. A worker that stops on purpose (a warm
or cold shutdown) says so, and kombu puts back what it held; one that dies simply stops
reporting.

Each worker process draws a boot token when it starts and says it with every report: a
worker restarted under the same name (the Procfile's, a container's) does not answer for
the messages its predecessor died holding."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Any

import redis
from celery import Celery, bootsteps, signals

from config.queues import QUEUE_OF
from worker.channels import Channel
from worker.engine.messages import delivery_of
from worker.engine.runtime import engine
from worker.engine.workers import REPORT_EVERY_SECONDS

logger = logging.getLogger(__name__)

PAGERDUTY_QUEUE = QUEUE_OF[Channel.PAGERDUTY]

#: This worker process, as opposed to an earlier one under the same name.
BOOT = uuid.uuid4().hex


def report(parent: Any) -> None:
    """Say that this worker (a worker or its consumer: both know the name and the app) is
    up, and which queues it consumes."""
    queues = sorted(parent.app.amqp.queues.consume_from)
    try:
        engine().workers.report(parent.hostname, queues, os.getpid(), BOOT)
    except redis.RedisError as exc:
        logger.warning("cannot report this worker as up (redis unavailable): %s", exc)


def warn_unconfigured(parent: Any) -> None:
    """Say at start, once, when this worker serves pages but has no routing key to send
    them with: each would be dead-lettered, and nothing else says why until the first."""
    settings = engine().settings
    if PAGERDUTY_QUEUE not in parent.app.amqp.queues.consume_from:
        return
    if settings.pagerduty_routing_key is None and not settings.pagerduty_team_routing_keys:
        logger.warning(
            "no PAGERDUTY_ROUTING_KEY (nor any PAGERDUTY_ROUTING_KEY_<TEAM>) is set: every "
            "page this worker takes will be dead-lettered (`gds-notify config check`)"
        )


class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
    """The worker's step: up when it starts (saying so when it cannot page), gone when it
    stops on purpose."""

    def start(self, parent: Any) -> None:
        report(parent)
        warn_unconfigured(parent)

    def stop(self, parent: Any) -> None:
        with contextlib.suppress(redis.RedisError):  # then it simply stops being seen
            engine().workers.gone(parent.hostname, BOOT)

    def terminate(self, parent: Any) -> None:
        # A cold shutdown is on purpose too, and kombu still puts back what it held.
        self.stop(parent)


class PresenceReports(bootsteps.StartStopStep):  # type: ignore[misc]
    """The consumer's step: the report every ``REPORT_EVERY_SECONDS``. Celery empties the
    event loop's timer when the broker connection drops and starts the consumer's steps
    again once it is back: a worker step's timer would be gone for good after the first
    Redis restart or failover, and a live worker counted dead until restarted."""

    def __init__(self, parent: Any, **options: Any) -> None:
        self.timer_ref: Any = None
        super().__init__(parent, **options)

    def start(self, parent: Any) -> None:
        report(parent)
        self.timer_ref = parent.timer.call_repeatedly(
            REPORT_EVERY_SECONDS, report, (parent,), priority=10
        )

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)


def held(sender: Any, request: Any, **_: Any) -> None:
    """Celery's ``task_received``: a delivery received with a countdown is marked as held
    by this worker until its attempt begins. Run in the consumer before the countdown is
    set, so the mark is there before the attempt's claim clears it."""
    delivery = delivery_of(request.name, request.id) if request.eta is not None else None
    if delivery is None:
        return
    try:
        engine().jobs.hold(*delivery, sender.hostname, BOOT)
    except redis.RedisError as exc:  # the sweep then waits the stall period for it
        logger.warning("cannot mark %s as held here (redis unavailable): %s", request.id, exc)


def install(app: Celery) -> None:
    """Every worker of ``app`` reports that it is up, and which pages it holds through a
    countdown."""
    app.steps["worker"].add(Presence)
    app.steps["consumer"].add(PresenceReports)
    signals.task_received.connect(held, weak=False)
