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
from worker.engine.dead_letters import KEEP_WHOLE_CHARS, json_size
from worker.engine.intake import job_id_for_task
from worker.engine.quarantine import message_copy, quarantine
from worker.engine.runtime import engine

logger = logging.getLogger(__name__)


class TaskRequest(Request):  # type: ignore[misc]
    """Celery's request for every task here (``NotifierTask.Request``)."""

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        if expired and self.task.name == NOTIFY_TASK:
            try:
                kept = self._keep_expired()
            except Exception:
                logger.exception("notify %s expired and could not be kept", self.id)
                kept = False
            if not kept:
                logger.warning("notify %s expired and was not kept: put back", self.id)
                self._put_back()
                return
        super()._announce_revoked(reason, terminated, signum, expired)

    def _keep_expired(self) -> bool:
        """Keep the expired notify; False when its letter could not be written."""
        why = (
            f"expired ('headers.expires' {self._message.headers.get('expires')}) before a "
            "worker ran it (it waited for its ETA or its task's rate limit)"
        )
        if keep_expired(self.id, self.args, self.kwargs, why):
            return True
        # Not one notification of a size to keep whole: kept as the message it was.
        reason = f"unrunnable task message: {why}"
        return quarantine(engine().dead_letters, reason, message_copy(self._message), self.id)

    def _put_back(self) -> None:
        state.task_ready(self)
        # Celery counted it as revoked when it found it expired; a worker that takes it
        # again must see an expired message, not a revoked id it would drop unkept.
        state.revoked.discard(self.id)
        self._already_revoked = True  # it is not run, whatever asks again
        try:
            self.reject(requeue=True)
        except Exception:
            logger.exception("notify %s: could not put it back either", self.id)


def keep_expired(task_id: str, args: Any, kwargs: Any, why: str) -> bool:
    """Dead-letter an expired ``notify`` under its task id, its notification whole, as
    intake does one it refuses: ``dlq replay`` sends it after all. Nothing is kept for one
    whose job exists (it was accepted before, and its message came back after its ack was
    lost). False, keeping nothing, when it is not one notification of at most
    ``KEEP_WHOLE_CHARS`` (as intake keeps a refused one whole; past it only the start of
    the message is kept). Raises what Redis does."""
    if not (isinstance(args, list | tuple) and len(args) == 1 and not kwargs):
        return False
    if json_size(args[0]) > KEEP_WHOLE_CHARS:
        return False
    eng = engine()
    if eng.jobs.get(job_id_for_task(task_id)) is not None:
        logger.info("notify %s expired, but its job was accepted already: nothing kept", task_id)
        return True
    reason = f"{why}: replay it to send it after all"
    eng.dead_letters.add(
        entry_id=job_id_for_task(task_id),
        job_id=None,
        channel="intake",
        reason=reason,
        payload={"args": [args[0]]},
    )
    logger.warning("notify %s dead-lettered: %s", task_id, reason)
    return True
