"""What wraps every task: a failure of Redis itself is never the job's failure.

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

logger = logging.getLogger(__name__)

#: Failures of Redis itself (job state or broker): not the job's fault, never its attempt.
OUTAGE_ERRORS = (redis.RedisError, OperationalError)

#: A pause before the message goes back, so a worker does not spin while Redis restarts.
OUTAGE_PAUSE_SECONDS = 1.0


class NotifierTask(Task):  # type: ignore[misc]
    """The base class of every task (``task_cls`` in worker/celery_app.py)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
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
