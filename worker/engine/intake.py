"""Intake: deduplicate, route, record, and hand each channel its delivery job.

Every door ends here: ``tasks.enqueue()`` in a Python producer, the ``notify`` task in a
worker (producers in any language), replays, heartbeat pages and the HTTP API. The request
arrives validated (:mod:`worker.job_request`); it is validated once. Publishing is handed
in (a :class:`Publisher`): the engine knows nothing of Celery.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from config.routing import route
from worker.addresses import parse_recipients
from worker.channels import Channel
from worker.engine.delivery import DeliveryJob
from worker.engine.runtime import Engine
from worker.exceptions import InvalidFieldError
from worker.job_request import InvalidJobError, JobRequest
from worker.notification import is_one_line

logger = logging.getLogger(__name__)

#: Publishes one delivery message (``payload``, a delivery job as JSON) for ``channel``,
#: under the message id ``task_id``.
Publisher = Callable[[Channel, str, dict[str, Any]], None]

#: What each channel does with a notification.
ACTION = {Channel.PAGERDUTY: "trigger", Channel.EMAIL: "send"}


@dataclass(frozen=True)
class Accepted:
    """A job intake took: its id, or for a duplicate the id of the first job."""

    job_id: str
    duplicate: bool = False
    channels: tuple[Channel, ...] = ()


def new_job_id() -> str:
    return uuid.uuid4().hex


def delivery_id(job_id: str, channel: Channel) -> str:
    """The message id of a job's delivery on ``channel`` (Celery's task id)."""
    return f"{job_id}-{channel.value}"


def accept(
    engine: Engine,
    request: JobRequest,
    job_id: str,
    source: str,
    publish: Publisher,
    replay_of: str | None = None,
) -> Accepted:
    """Route the job, claim its idempotency id, record it, and publish one delivery per
    channel. A copy of an idempotency id accepted within the TTL is not queued again: the
    answer names the first job. Raises :class:`InvalidJobError` for an email whose
    recipient can never be an address."""
    settings = engine.settings
    rule = route(settings.routing_rules, request.priority, request.team, request.alert_name)
    channels = [request.channel] if request.channel else list(rule.channels)
    email_to = rule.email_to if Channel.EMAIL in channels else None
    if Channel.EMAIL in channels:
        try:
            parse_recipients("recipient", email_to or request.recipient)
        except InvalidFieldError as exc:
            raise InvalidJobError([{"field": exc.field, "message": exc.problem}]) from None

    idem = request.idempotency_id
    if idem and replay_of is None:
        first = engine.idempotency.claim(idem, job_id)
        if first is not None and first != job_id:
            engine.jobs.add_duplicate(first)
            logger.info("job %s: duplicate of %s (idempotency id), dropped", job_id, first)
            return Accepted(first, duplicate=True, channels=tuple(channels))
    elif idem:
        engine.idempotency.reassign(idem, job_id)

    notification = request.notification()
    now = time.time()
    payloads = {
        ch: DeliveryJob(
            job_id=job_id,
            channel=ch,
            action=ACTION[ch],
            notification=notification,
            team=request.team,
            email_to=email_to if ch is Channel.EMAIL else None,
            enqueued_at=now,
        ).model_dump(mode="json")
        for ch in channels
    }
    try:
        engine.jobs.create(  # a redelivered notify finds its record already there
            job_id,
            channels=[c.value for c in channels],
            action=" + ".join(ACTION[c] for c in channels),
            source=source,
            team=request.team,
            notification=next(iter(payloads.values()))["notification"],
            replay_of=replay_of,
            payloads={ch.value: payload for ch, payload in payloads.items()},
        )
        for ch, payload in payloads.items():
            publish(ch, delivery_id(job_id, ch), payload)
    except Exception:
        if idem and replay_of is None:
            # Not accepted after all: the producer's retry must not be called a duplicate.
            engine.idempotency.release(idem, job_id)
        raise
    logger.info("job %s accepted for %s", job_id, ", ".join(c.value for c in channels))
    return Accepted(job_id, channels=tuple(channels))


def lifecycle(
    engine: Engine,
    action: Literal["acknowledge", "resolve"],
    dedup_key: str,
    team: str | None,
    publish: Publisher,
) -> str:
    """Queue an acknowledge or resolve for ``dedup_key``; returns the job id."""
    if not dedup_key or not dedup_key.strip() or not is_one_line(dedup_key):
        raise InvalidJobError([{"field": "dedup_key", "message": "must be a non-blank line"}])
    job_id = new_job_id()
    payload = DeliveryJob(
        job_id=job_id,
        channel=Channel.PAGERDUTY,
        action=action,
        dedup_key=dedup_key,
        team=team,
        enqueued_at=time.time(),
    ).model_dump(mode="json")
    engine.jobs.create(
        job_id,
        channels=[Channel.PAGERDUTY.value],
        action=action,
        source=action,
        team=team,
        dedup_key=dedup_key,
        payloads={Channel.PAGERDUTY.value: payload},
    )
    publish(Channel.PAGERDUTY, delivery_id(job_id, Channel.PAGERDUTY), payload)
    return job_id
