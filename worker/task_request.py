"""How a worker holds a task message it has taken but not yet run: Celery's own request,
except that a ``notify`` expiring while it waits is dead-lettered instead of dropped.

The consumer dead-letters a ``notify`` that expired before a worker took it
(worker/task_message_check.py). A message can also expire after it is taken: while it
waits for its ETA on the worker's timer, or behind its task's rate limit (an operator's
``celery control rate_limit``, or a task annotation). Celery then acknowledges it and drops
it with one log line and a REVOKED state. Here its notification is kept first, under its
task id, as an intake dead letter with the reason: ``dlq replay`` sends it after all, if an
operator decides it still should go. The letter is written before Celery acknowledges the
message; when it cannot be written, the message is put back instead (or, with Redis
unreachable, stays unacknowledged and returns after the visibility timeout), to be
dead-lettered when it is taken again.

Revocations by id (Flower's "revoke", ``celery control revoke``) are an operator's
decision and stay Celery's: only expiry is kept.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker import state
from celery.worker.request import Request

from config.queues import NOTIFY_TASK
from worker.engine.runtime import engine

logger = logging.getLogger(__name__)


class TaskRequest(Request):  # type: ignore[misc]
    """Celery's request for every task here (``NotifierTask.Request``)."""

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        if expired and self.task.name == NOTIFY_TASK:
            try:
                self._keep_expired()
            except Exception:
                logger.exception("notify %s expired and could not be kept: put back", self.id)
                self._put_back()
                return
        super()._announce_revoked(reason, terminated, signum, expired)

    def _keep_expired(self) -> None:
        keep_expired(
            self.id,
            self.args,
            self.kwargs,
            f"expired ('headers.expires' {self._message.headers.get('expires')}) before a "
            "worker ran it (it waited for its ETA or its task's rate limit)",
        )

    def _put_back(self) -> None:
        state.task_ready(self)
        self._already_revoked = True  # it is not run, whatever asks again
        try:
            self.reject(requeue=True)
        except Exception:
            logger.exception("notify %s: could not put it back either", self.id)


def keep_expired(task_id: str, args: Any, kwargs: Any, why: str) -> None:
    """Dead-letter an expired ``notify`` under its task id, its notification whole, as
    intake does one it refuses: ``dlq replay`` sends it after all. Raises what Redis does."""
    reason = f"{why}: replay it to send it after all"
    payload: dict[str, Any] = {"args": list(args)}
    if kwargs:
        payload["kwargs"] = dict(kwargs)
    engine().dead_letters.add(
        entry_id=task_id, job_id=None, channel="intake", reason=reason, payload=payload
    )
    logger.warning("notify %s dead-lettered: %s", task_id, reason)
