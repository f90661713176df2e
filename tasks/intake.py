"""Intake: validate, deduplicate, route, and hand each channel its delivery job.

Two doors, one room: ``enqueue()`` runs intake in the producer (Python), the ``notify``
task runs it in a worker (any language, via ``send_task("notify", args=[{...}])``). Both
end in :func:`accept`.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from config.celery_config import EMAIL_QUEUE, PAGERDUTY_QUEUE
from config.routing import Channel, route
from config.settings import get_settings
from tasks.schema import InvalidJobError, JobRequest, parse_request
from worker import idempotency, keys
from worker.celery_app import app
from worker.dead_letters import DeadLetters
from worker.delivery import DeliveryJob
from worker.exceptions import NotificationDeliveryError
from worker.jobs import JobStore
from worker.providers.base import is_one_line
from worker.providers.smtp_message import parse_recipients
from worker.redis_store import get_redis

logger = logging.getLogger(__name__)

QUEUE_OF = {Channel.PAGERDUTY: PAGERDUTY_QUEUE, Channel.EMAIL: EMAIL_QUEUE}


def new_job_id() -> str:
    return uuid.uuid4().hex


def enqueue(
    notification: Any,
    team: str | None = None,
    channel: str | None = None,
) -> str:
    """Validate and queue a notification; return its job id.

    Raises :class:`tasks.schema.InvalidJobError` naming each bad field. A copy of an
    idempotency id already accepted within the TTL returns the first job's id and sends
    nothing.
    """
    request = parse_request(notification)
    updates: dict[str, Any] = {}
    if team is not None:
        updates["team"] = team
    if channel is not None:
        updates["channel"] = channel
    if updates:
        request = parse_request(request.model_dump() | updates)
    return accept(request, new_job_id(), source="enqueue")


def accept(request: JobRequest, job_id: str, source: str, replay_of: str | None = None) -> str:
    """Route the job, claim its idempotency id, record it, and publish one delivery per
    channel. Returns the job id (the first job's, for a duplicate)."""
    settings = get_settings()
    rule = route(settings.routing_rules, request.priority, request.team, request.alert_name)
    channels = [request.channel] if request.channel else list(rule.channels)
    email_to = rule.email_to if Channel.EMAIL in channels else None
    if Channel.EMAIL in channels:
        try:
            parse_recipients("recipient", email_to or request.recipient)
        except NotificationDeliveryError as exc:
            field, _, message = str(exc).partition(": ")
            raise InvalidJobError([{"field": field, "message": message}]) from None

    store = JobStore()
    idem = request.idempotency_id
    if idem and replay_of is None:
        first = idempotency.claim(idem, job_id)
        if first is not None and first != job_id:
            store.add_duplicate(first)
            logger.info("job %s: duplicate of %s (idempotency id), dropped", job_id, first)
            return first
    elif idem:
        idempotency.reassign(idem, job_id)

    notification = request.notification()
    now = time.time()
    deliveries = [
        DeliveryJob(
            job_id=job_id,
            channel=ch,
            action="trigger" if ch is Channel.PAGERDUTY else "send",
            notification=notification,
            team=request.team,
            email_to=email_to if ch is Channel.EMAIL else None,
            enqueued_at=now,
        )
        for ch in channels
    ]
    try:
        store.create(  # a redelivered notify finds its record already there
            job_id,
            channels=[c.value for c in channels],
            action="trigger",
            source=source,
            team=request.team,
            notification=notification.model_dump(mode="json"),
            replay_of=replay_of,
            payloads={d.channel.value: d.model_dump(mode="json") for d in deliveries},
        )
        for delivery in deliveries:
            publish(delivery)
    except Exception:
        if idem and replay_of is None:
            _release(idem, job_id)  # let the producer's retry be accepted, not "duplicate"
        raise
    logger.info("job %s accepted for %s", job_id, ", ".join(c.value for c in channels))
    return job_id


def publish(job: DeliveryJob) -> None:
    """Send a delivery job to its channel's queue (task id: ``JOBID-CHANNEL``)."""
    app.send_task(
        f"deliver.{job.channel.value}",
        args=[job.model_dump(mode="json")],
        queue=QUEUE_OF[job.channel],
        routing_key=QUEUE_OF[job.channel],
        task_id=f"{job.job_id}-{job.channel.value}",
    )


def _release(idempotency_id: str, job_id: str) -> None:
    r = get_redis()
    key = keys.idempotency(idempotency_id)
    if r.get(key) == job_id:
        r.delete(key)


def lifecycle(action: str, dedup_key: str, team: str | None) -> str:
    """Queue an acknowledge or resolve for ``dedup_key``; returns the job id."""
    if not dedup_key or not dedup_key.strip() or not is_one_line(dedup_key):
        raise InvalidJobError([{"field": "dedup_key", "message": "must be a non-blank line"}])
    job_id = new_job_id()
    delivery = DeliveryJob(
        job_id=job_id,
        channel=Channel.PAGERDUTY,
        action=action,
        dedup_key=dedup_key,
        team=team,
        enqueued_at=time.time(),
    )
    JobStore().create(
        job_id,
        channels=[Channel.PAGERDUTY.value],
        action=action,
        source=action,
        team=team,
        dedup_key=dedup_key,
        payloads={Channel.PAGERDUTY.value: delivery.model_dump(mode="json")},
    )
    publish(delivery)
    return job_id


def _truncate(value: Any, limit: int = 65_536) -> Any:
    """Keep a dead letter's copy of a hostile payload bounded."""
    text = repr(value)
    return value if len(text) <= limit else {"truncated": text[:limit], "size": len(text)}


@app.task(bind=True, name="notify", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def notify(self: Any, *args: Any, **kwargs: Any) -> str | None:
    """Intake for producers in any language: one argument, the job as a JSON object.

    Invalid payloads of any shape are dead-lettered with the reason; they are never
    retried and never crash the worker.
    """
    job_id = self.request.id or new_job_id()
    dead = DeadLetters()
    if len(args) != 1 or kwargs:
        dead.add(
            entry_id=job_id,
            job_id=None,
            channel="intake",
            reason=(
                "invalid payload: notify takes exactly one argument, the job as a JSON object "
                f"(got {len(args)} positional and {len(kwargs)} keyword arguments)"
            ),
            payload=_truncate({"args": list(args), "kwargs": kwargs}),
        )
        return None
    try:
        request = parse_request(args[0])
        return accept(request, job_id, source="notify")
    except InvalidJobError as exc:
        dead.add(
            entry_id=job_id,
            job_id=None,
            channel="intake",
            reason=str(exc),
            payload=_truncate({"args": list(args)}),
            last_error={"type": "InvalidJobError", "message": str(exc), "errors": exc.errors},
        )
        logger.warning("job %s dead-lettered at intake: %s", job_id, exc)
        return None
    except (redis.RedisError, OperationalError) as exc:
        # Redis failed underneath us: put the message back rather than lose it.
        logger.warning("redis unavailable during intake of %s; requeueing: %s", job_id, exc)
        time.sleep(1.0)
        raise Reject(exc, requeue=True) from None
