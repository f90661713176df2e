"""How a worker holds a task message it has taken but not yet run: Celery's own request,
except that a ``notify`` expiring while it waits is dead-lettered instead of dropped.

The consumer dead-letters a ``notify`` that expired before a worker took it
(worker/task_message_check.py). A message can also expire after it is taken: while it
waits for its ETA on the worker's timer, or behind its task's rate limit (an operator's
``celery control rate_limit``). Celery then acknowledges it and drops it with one log line
and a REVOKED state. Here the message is kept first, under its task id, with the reason.
The letter is written before Celery acknowledges the message, so a worker dying between
the two leaves the message to come back (and to be dead-lettered by the consumer, which
keeps the same message once).

Revocations by id (Flower's "revoke", ``celery control revoke``) are an operator's
decision and stay Celery's: only expiry is kept.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from config.queues import NOTIFY_TASK
from worker.engine.quarantine import message_copy, quarantine
from worker.engine.runtime import engine


class TaskRequest(Request):  # type: ignore[misc]
    """Celery's request for every task here (``NotifierTask.Request``)."""

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        if expired and self.task.name == NOTIFY_TASK:
            expires = self._message.headers.get("expires")
            quarantine(
                engine().dead_letters,
                f"unrunnable task message: expired ('headers.expires' {expires}) "
                "before a worker ran it (it waited for its ETA or its task's rate limit)",
                message_copy(self._message),
                self.id,
            )
        super()._announce_revoked(reason, terminated, signum, expired)
