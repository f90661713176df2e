"""Messages no task can run: kept as dead letters with the reason, never silently dropped.

Celery discards a message that names no registered task (``task_unknown``) or that cannot
be decoded (``task_rejected``: wrong content type, a body that is not JSON) after logging
it. These receivers first keep a bounded copy in the dead letters, so an operator sees it
in ``gds-notify dlq list`` with the reason, and in Flower as a failed task (Celery itself
announces an unknown task as failed, with ``NotRegistered``); the worker then carries on
serving. (Queue items that are not even message envelopes are caught earlier, by the
broker transport.)
"""

from __future__ import annotations

from typing import Any

from celery import signals

from worker.consumer import announce_failure
from worker.engine.quarantine import carried_id, message_copy, quarantine
from worker.engine.runtime import engine


@signals.task_unknown.connect  # type: ignore[untyped-decorator,unused-ignore]
def _unknown_task(name: str = "", id: str | None = None, message: Any = None, **_: Any) -> None:
    quarantine(
        engine().dead_letters,
        f"unknown task {name!r}: no worker task has this name",
        message_copy(message),
        id,
    )


@signals.task_rejected.connect  # type: ignore[untyped-decorator,unused-ignore]
def _undecodable(
    sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any
) -> None:
    detail = f"{type(exc).__name__}: {exc}" if exc else "rejected by the consumer"
    reason = f"undecodable message: {detail}"
    headers = getattr(message, "headers", None)
    quarantine(engine().dead_letters, reason, message_copy(message), carried_id(headers))
    announce_failure(sender, message, reason)  # the sender is Celery's consumer
