"""The Python producer API: what ``import tasks`` offers a service that sends notifications.

Each call runs intake in the caller, so a bad notification raises here, naming the field,
instead of vanishing into a queue; what is accepted is recorded and queued in Redis in one
step. None of it needs Celery in the producer.
"""

from __future__ import annotations

from typing import Any

from worker.engine import intake
from worker.engine.heartbeats import reports
from worker.engine.replay import replay as replay_entry
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError, parse_request


def enqueue(notification: Any, team: str | None = None, channel: str | None = None) -> str:
    """Validate and queue a notification; return its job id.

    ``notification`` is a :class:`~worker.notification.Notification` or the same fields as a
    dict. Raises :class:`~worker.job_request.InvalidJobError` naming each bad field. A copy
    of an idempotency id already accepted within the TTL returns the first job's id and
    sends nothing.
    """
    routing = {k: v for k, v in (("team", team), ("channel", channel)) if v is not None}
    try:
        request = parse_request(notification, **routing)
        return intake.accept(engine(), request, intake.new_job_id(), "enqueue").job_id
    except InvalidJobError:
        intake.refused(engine(), "enqueue")
        raise


def acknowledge(dedup_key: str, team: str | None = None) -> str:
    """Queue an acknowledge for the incident with ``dedup_key``; returns the job id."""
    return intake.lifecycle(engine(), "acknowledge", dedup_key, team, "enqueue")


def resolve(dedup_key: str, team: str | None = None) -> str:
    """Queue a resolve for the incident with ``dedup_key``; returns the job id."""
    return intake.lifecycle(engine(), "resolve", dedup_key, team, "enqueue")


def replay(entry_id: str) -> str:
    """Send a dead-lettered job through intake again; returns the new job id."""
    return replay_entry(engine(), entry_id)


def heartbeat(slug: str, status: str = "up", at: Any = None) -> float:
    """Record a heartbeat for ``slug``; returns its epoch time (Redis clock).

    ``status`` is "up" or "fail"; ``at`` (a datetime, ISO 8601 string or epoch seconds)
    defaults to now. Needs ``HEARTBEAT_SERVICES_FILE`` and ``REDIS_URL``; an unknown slug
    or a bad value raises here.
    """
    return reports.record(engine(), slug, status, at)
