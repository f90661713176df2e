"""What wraps every task: how a step's outcome becomes Celery's task state, and why a
failure of Redis itself is never the job's failure.

Outcomes (:class:`worker.engine.delivery.Outcome`) become task state in one place,
:meth:`NotifierTask.settle`: a step that must come back is retried after its delay; a
job that ended dead fails the task with :class:`DeadLettered` (FAILURE in Flower, with the
dead letter's reason); anything else succeeds with the outcome's name. The dead letter is
recorded before the task fails, and the failed task's message is acknowledged
(``task_acks_on_failure_or_timeout``), so it is never retried nor run again.

Redis holds the broker and the job state. If it fails underneath a task (a restart, a
failover, the network), counting a failure would acknowledge the message and lose it; the
message is put back instead. While Redis is unreachable even that cannot reach it, and the
message stays in Redis's own unacknowledged set, to return after the visibility timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from worker.engine.delivery import Outcome, OutcomeKind

logger = logging.getLogger(__name__)

#: Failures of Redis itself (job state or broker): not the job's fault, never its attempt.
OUTAGE_ERRORS = (redis.RedisError, OperationalError)

#: What a Celery client can attach to a task for the worker to run after it.
LINKS = ("callbacks", "errbacks", "chain", "chord")

#: A pause before the message goes back, so a worker does not spin while Redis restarts.
OUTAGE_PAUSE_SECONDS = 1.0


class DeadLettered(Exception):
    """The job was dead-lettered: raised after the dead letter is recorded, so that the
    task ends as FAILURE (in Flower, and its "failed" counts) with the dead letter's reason.

    ``reason`` is the dead letter's own, and holds no secret (providers mask routing keys
    and never write passwords into errors). The one argument is kept in ``args``, so the
    exception pickles and Celery's serializers rebuild it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class NotifierTask(Task):  # type: ignore[misc]
    """The base class of every task (``task_cls`` in worker/celery_app.py)."""

    #: An expected ending, not a crash: Celery logs it at INFO, in one line with the
    #: reason, instead of at ERROR with a traceback.
    throws = (DeadLettered,)

    #: How a taken message waits to run: a ``notify`` that expires meanwhile is
    #: dead-lettered, not dropped (worker/task_request.py).
    Request = "worker.task_request:TaskRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._drop_links()
        try:
            return super().__call__(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            logger.warning(
                "%s %s: redis unavailable, message put back: %s",
                self.name,
                self.request.id,
                exc,
            )
            time.sleep(OUTAGE_PAUSE_SECONDS)
            raise Reject(exc, requeue=True) from None

    def _drop_links(self) -> None:
        # A producer's Celery client can attach links, a chain or a chord to `notify`;
        # Celery would run them after intake, as tasks of this worker (a `deliver.*` on a
        # string, a task nobody has): each a dead letter of its own, and never what the
        # producer meant. This service runs none, and says so.
        request = self.request
        attached = [name for name in LINKS if getattr(request, name, None)]
        if attached:
            logger.warning(
                "%s %s: ignored what its producer attached (%s): tasks here run no links",
                self.name,
                request.id,
                ", ".join(attached),
            )
            for name in attached:
                setattr(request, name, None)

    def settle(self, outcome: Outcome) -> str:
        """End this run as ``outcome`` says: retry it after ``outcome.delay``, fail it with
        :class:`DeadLettered` when the job is dead, else return the outcome's name."""
        if outcome.again:
            raise self.retry(countdown=outcome.delay, max_retries=None)
        if outcome.kind is OutcomeKind.DEAD:
            # Recorded already; the failed run is acknowledged, never retried nor redelivered.
            raise DeadLettered(outcome.reason or "dead-lettered")
        return outcome.kind.value
