"""Recovery of intake messages a dead worker held: put back on their queue.

A worker keeps every message it has taken in kombu's unacked hash until it acknowledges
it. One killed (the OOM killer, ``kill -9``, a memory limit) leaves its messages there, and
kombu hands them back only after the visibility timeout (an hour by default). For a
delivery the job record speaks (worker/engine/recovery.py); a ``notify`` or ``heartbeat``
sent with a Celery client has no record until intake has run, so such a page would wait
out the hour.

Intake takes milliseconds, so an intake message still in a worker's hands
:data:`HELD_SECONDS` after it fell due (it was taken, or its countdown ran out) was held
by a worker that died, or one stuck: it goes back on its queue, as kombu would put it
back. A copy of one a live worker still runs is harmless: intake is idempotent by the
task id (a job's record is written once, under its id). A heartbeat sent without ``at``
counts from when it runs: late by up to the sweep's delay, and twice if its worker was
only slow.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.queues import INTAKE_QUEUE, INTAKE_TASKS
from worker.engine import stats
from worker.engine.broker_queues import queue_list
from worker.engine.runtime import Engine

#: How long after it fell due an intake message may still be in a live worker's hands:
#: intake itself takes milliseconds, Redis retried through a failover seconds. (A pool
#: whose every thread waits on a slow PagerDuty when a countdown runs out can hold one
#: longer; the copy is harmless.)
HELD_SECONDS = 60.0
#: Messages taken before then that one sweep reads, the oldest first (each read whole: a
#: storm of deliveries held through their countdowns can be thousands).
READ_LIMIT = 2_000


@dataclass(frozen=True)
class PutBack:
    """One intake message put back on its queue: its task, its id (a ``notify``'s is the
    job id), and how long it had been held since it fell due."""

    task: str
    task_id: str
    held_seconds: float


@dataclass(frozen=True)
class _Held:
    message: dict[str, Any]
    task: str
    task_id: str
    due: float
    queue_list: str


def put_back(engine: Engine, now: float | None = None) -> list[PutBack]:
    """Put every intake message held :data:`HELD_SECONDS` past its due moment back on its
    queue, once (one acknowledged or put back meanwhile is left alone), and count them;
    returns what was put back."""
    now = time.time() if now is None else now
    broker = engine.broker
    done: list[PutBack] = []
    for tag, entry, taken_at in broker.taken_before(now - HELD_SECONDS, READ_LIMIT):
        held = _intake(entry, taken_at)
        if held is None or now - held.due < HELD_SECONDS:
            continue
        message = json.dumps(_redelivered(held.message))
        if broker.put_back(tag, entry, held.queue_list, message):
            done.append(PutBack(held.task, held.task_id, now - held.due))
    if done:
        stats.add(engine.redis, [stats.count("recovered", "intake", by=len(done))])
    return done


def _intake(entry: str, taken_at: float) -> _Held | None:
    """What an unacked entry holds, if it is an intake message due by now; None for
    anything else (a delivery, which its job record covers; an entry of another shape)."""
    try:
        message, exchange, routing_key = json.loads(entry)
        headers = message["headers"]
        task, task_id, eta = headers["task"], headers["id"], headers.get("eta")
        priority = message.get("properties", {}).get("priority")
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return None  # no message of ours (RecursionError: JSON nested past Python's limit)
    if routing_key != INTAKE_QUEUE or exchange not in ("", INTAKE_QUEUE):
        return None
    if task not in INTAKE_TASKS or not isinstance(task_id, str):
        return None
    due = taken_at
    if eta is not None:
        try:
            moment = datetime.fromisoformat(str(eta))
        except ValueError:
            return None  # Celery could not run it either; the visibility timeout decides
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        due = max(due, moment.timestamp())
    return _Held(message, task, task_id, due, queue_list(INTAKE_QUEUE, priority))


def _redelivered(message: dict[str, Any]) -> dict[str, Any]:
    """The message as kombu's restore queues it again: marked redelivered."""
    message = dict(message)
    message["headers"] = {**message["headers"], "redelivered": True}
    properties = message.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get("delivery_info"), dict):
        info = {**properties["delivery_info"], "redelivered": True}
        message["properties"] = {**properties, "delivery_info": info}
    return message
