"""Whether Celery can take a task message: the shape its consumer assumes without checking.

Celery's consumer trusts a task message's headers and body. A task name that is a list, an
id that is missing or not a string, a ``timelimit`` that is not two numbers, or a body that
is not ``[args, kwargs, embed]`` raises inside the consumer's event loop: the worker stops
with "Unrecoverable error", kombu puts the message back, and the next worker stops on it
too; or the message is taken and then hangs in a pool thread, never acknowledged. Anyone
who can write to the queue can send such a message, so :class:`worker.consumer.Consumer`
asks :func:`task_message_problem` first and dead-letters what it names.

A ``notify`` that expired (its producer's ``expires``) before a worker took it is
dead-lettered too, its notification kept for a replay: Celery would drop it with one log
line.

Messages Celery already handles (no task name at all, an unknown task, a body that does not
decode) pass here: the consumer dead-letters them on those paths (worker/consumer.py).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from config.queues import NOTIFY_TASK

#: How the problem of a ``notify`` that expired before a worker took it begins (the
#: consumer keeps such a message as its notification, to be replayed if still wanted).
EXPIRED = "expired ("


def _seconds(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0


def _headers_problem(headers: dict[str, Any]) -> str | None:
    if not isinstance(headers["task"], str):
        return "'headers.task' is not a string"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return "'headers.id' is not a non-empty string"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple) and len(limits) == 2 and all(map(_seconds, limits))
    ):
        return "'headers.timelimit' is not [hard, soft] seconds"
    return None


class _Unreadable(ValueError):
    """A header that should be an ISO 8601 time and is not one Python can place."""


def _time(headers: dict[str, Any], name: str) -> float | None:
    """The header ``name`` as a timestamp, None when absent. Celery rejects a time it
    cannot convert with a log line and nothing more; here it is named instead."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # as Celery reads it (enable_utc)
        return moment.timestamp()
    except (TypeError, ValueError, OverflowError):
        raise _Unreadable(f"'headers.{name}' is not an ISO 8601 time: {value!r:.100}") from None


def _timing_problem(headers: dict[str, Any], horizon: float, now: float) -> str | None:
    try:
        eta, expires = _time(headers, "eta"), _time(headers, "expires")
    except _Unreadable as exc:
        return str(exc)
    if eta is not None and eta - now > horizon:
        # kombu would hand it to another worker each timeout while the first still holds it.
        return (
            f"'headers.eta' {headers['eta']} is more than the visibility timeout "
            f"({horizon:.0f} s) ahead: Celery on Redis would deliver it again every "
            "timeout; send it nearer its time"
        )
    if headers["task"] == NOTIFY_TASK and expires is not None:
        # Celery would drop it with one log line; a notification is never dropped unseen.
        if expires <= now:
            return f"{EXPIRED}'headers.expires' {headers['expires']}) before a worker took it"
        if eta is not None and expires <= eta:
            return f"'headers.expires' {headers['expires']} is before its 'headers.eta'"
    return None


def _body_problem(task: Any, payload: Any) -> str | None:
    if not (isinstance(payload, list | tuple) and len(payload) == 3):
        return "the body is not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple):
        return "the body's args are not a list"
    if not isinstance(kwargs, dict):
        return "the body's kwargs are not an object"
    if embed is not None and not isinstance(embed, dict):
        return "the body's embed is not an object"
    check = getattr(task, "__header__", None)  # the task's signature, as Celery checks it
    if check is not None:
        try:
            check(*args, **kwargs)
        except TypeError as exc:
            return f"the arguments do not fit task {task.name!r}: {exc}"
    return None


def task_message_problem(app: Any, message: Any, horizon: float) -> str | None:
    """Why Celery's consumer cannot take ``message`` (a protocol 2 task message for one of
    ``app``'s tasks), or None when it can or when Celery's own checks will catch it.
    ``horizon``: the furthest ahead, in seconds, an ETA may be (the visibility timeout)."""
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None  # protocol 1, or not a task message: Celery's own checks
    problem = _headers_problem(headers)
    if problem is not None:
        return problem
    task = app.tasks.get(headers["task"])
    if task is None:
        return None  # unknown: Celery says so, the consumer dead-letters it (consumer.py)
    problem = _timing_problem(headers, horizon, time.time())
    if problem is not None:
        return problem
    try:
        payload = message.decode()  # kept by kombu: the request reads the same
    except Exception:
        return None  # Celery's decode error path, dead-lettered (worker/consumer.py)
    return _body_problem(task, payload)
