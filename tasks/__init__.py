"""The Celery tasks and the producer API.

Producers::

    import tasks
    job_id = tasks.enqueue(notification, team="dba")     # validates, dedupes, routes
    tasks.acknowledge("alert-12345", team="dba")
    tasks.resolve("alert-12345", team="dba")
    tasks.heartbeat("billing-api")                        # a monitored service is alive

Tasks on the wire: ``notify`` (intake, any language), ``deliver.pagerduty``,
``deliver.email``, ``heartbeat`` (any language) and ``heartbeat.check`` (beat). Tasks
are thin: validation, routing and delivery live in worker/.
"""

from tasks.heartbeats import InvalidHeartbeatError, heartbeat
from tasks.intake import enqueue, lifecycle
from tasks.replay import replay
from tasks.schema import InvalidJobError, JobRequest, json_schema


def acknowledge(dedup_key: str, team: str | None = None) -> str:
    """Queue an acknowledge for the incident with ``dedup_key``; returns the job id."""
    return lifecycle("acknowledge", dedup_key, team)


def resolve(dedup_key: str, team: str | None = None) -> str:
    """Queue a resolve for the incident with ``dedup_key``; returns the job id."""
    return lifecycle("resolve", dedup_key, team)


__all__ = [
    "InvalidHeartbeatError",
    "InvalidJobError",
    "JobRequest",
    "acknowledge",
    "enqueue",
    "heartbeat",
    "json_schema",
    "replay",
    "resolve",
]
