"""Intake: deduplicate, route, record, and queue each channel's delivery.

Every door ends here: ``tasks.enqueue()`` in a Python producer, the ``notify`` task in a
worker (producers in any language), the HTTP API, replays and heartbeat pages. The request
arrives validated (:mod:`worker.job_request`), once. Accepting is one atomic script
(:meth:`worker.engine.jobs.JobStore.create`): the idempotency claim, the record, and the
delivery messages on their queues, or none of them.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import redis

from config.routing import route, why_not
from worker.addresses import check_email_headers, parse_recipients
from worker.channels import Channel
from worker.engine import stats
from worker.engine.delivery_job import DeliveryJob
from worker.engine.jobs import JobIdTakenError
from worker.engine.runtime import Engine
from worker.exceptions import InvalidFieldError
from worker.job_request import InvalidJobError, JobRequest, check_team
from worker.notification import event_links_problem, is_one_line
from worker.providers.pagerduty_events import event_dedup_key, fit_dedup_key

logger = logging.getLogger(__name__)

#: What each channel does with a notification.
ACTION = {Channel.PAGERDUTY: "trigger", Channel.EMAIL: "send"}


@dataclass(frozen=True)
class Accepted:
    """A job intake took: its id and channels, or for a duplicate the first job's."""

    job_id: str
    duplicate: bool = False
    channels: tuple[Channel, ...] = ()


def new_job_id() -> str:
    return uuid.uuid4().hex


#: The namespace of job ids derived from what they do (:func:`derived_job_id`).
_DERIVED = uuid.UUID("6f1c3b0e-0d5a-5f8e-9c41-2a7d9b6e4f10")


def derived_job_id(*parts: str) -> str:
    """A job id that is the same whenever it is derived from the same ``parts``: accepting
    under it again finds the job's record and queues nothing (:meth:`JobStore.create`), so
    a step that may be run twice (a replay whose process died before it removed its letter)
    sends its job once."""
    return uuid.uuid5(_DERIVED, "\x1f".join(parts)).hex


#: The longest task id a job takes as its own id.
JOB_ID_CHARS = 255


def job_id_for_task(task_id: str) -> str:
    """The job id of a ``notify`` message: its Celery task id (so a message delivered
    twice is one job, and Flower's id finds it), or, for one a job's keys cannot hold, one
    derived from it, the same each time: a ``:`` separates a job's key from the keys beside
    it (a producer's ``X:attempts`` would be job X's attempt list), a control character
    would reach logs and terminals, and a very long one every key."""
    if ":" in task_id or not task_id.isprintable() or len(task_id) > JOB_ID_CHARS:
        return derived_job_id("celery task", task_id)
    return task_id


class JobIdReusedError(InvalidJobError):
    """A job id accepted already for a different notification."""


def accept(
    engine: Engine,
    request: JobRequest,
    job_id: str,
    source: str,
    replay_of: str | None = None,
    check_email: bool = True,
    message_of: str | None = None,
    first_accepted_at: float | None = None,
) -> Accepted:
    """Route the job, then claim its idempotency id, record it and queue one delivery per
    channel in one step. A copy of an idempotency id accepted within the TTL is not queued
    again: the answer names the first job. Raises :class:`InvalidJobError` for a job
    routed to email alone whose recipient or headers could never be sent (unless
    ``check_email`` is False: the email of something that paged, dead-lettered instead).
    ``message_of``: for a replay, the job whose Message-ID its email carries;
    ``first_accepted_at``, when its first job was accepted (its page's timestamp, its
    email's Date)."""
    rule = route(
        engine.settings.routing_rules,
        request.priority,
        request.team,
        request.alert_name,
        request.db_instance_id,
    )
    channels = [request.channel] if request.channel else list(rule.channels)
    email_to = rule.email_to if Channel.EMAIL in channels else None
    # An email that could never go out is refused here, naming the field, rather than
    # dead-lettered after it was accepted: its recipient, and what becomes a header,
    # checked as the message will check them. Not when the job also pages: a page is never
    # refused for its email's sake; it goes out, and the email's dead letter says why.
    if check_email and Channel.EMAIL in channels and Channel.PAGERDUTY not in channels:
        try:
            parse_recipients("recipient", email_to or request.recipient)
            check_email_headers(request)
        except InvalidFieldError as exc:
            message = exc.problem
            unmatched = (
                why_not(
                    engine.settings.routing_rules,
                    request.priority,
                    request.team,
                    request.alert_name,
                    request.db_instance_id,
                )
                if exc.field == "recipient" and email_to is None
                else None
            )
            if unmatched is not None:
                # The sender meant a rule's recipients, and missed the rule.
                message += f"; {unmatched}"
            elif (
                exc.field == "recipient"
                and request.channel is None
                and email_to is None
                and "@" not in request.recipient
            ):
                # The usual cause: a component sent without a paging priority.
                message += (
                    f"; priority {request.priority.value} is sent by email: to page a "
                    "component, send it with priority critical or emergency; to mail "
                    "someone about it, give it a ROUTING_RULES rule with an email_to"
                )
            raise InvalidJobError([{"field": exc.field, "message": message}]) from None
    if Channel.PAGERDUTY in channels and (problem := event_links_problem(request.metadata)):
        # Refused here, naming the item, rather than a page dead-lettered once accepted.
        raise InvalidJobError([{"field": "metadata", "message": problem}])
    return _queue(
        engine,
        request,
        job_id,
        source,
        channels,
        email_to,
        replay_of,
        resend=False,
        message_of=message_of,
        first_accepted_at=first_accepted_at,
    )


def resend(
    engine: Engine,
    request: JobRequest,
    to: str,
    job_id: str,
    source: str,
    replay_of: str | None = None,
    first_accepted_at: float | None = None,
) -> Accepted:
    """Queue ``request`` as an email to ``to`` alone, past the routing rules (whose
    ``email_to`` would send it to their whole list): the addresses a server refused while
    it took the others (refused_recipients.py), and the replay of their dead letter."""
    return _queue(
        engine,
        request,
        job_id,
        source,
        [Channel.EMAIL],
        to,
        replay_of,
        resend=True,
        first_accepted_at=first_accepted_at,
    )


def _queue(
    engine: Engine,
    request: JobRequest,
    job_id: str,
    source: str,
    channels: list[Channel],
    email_to: str | None,
    replay_of: str | None,
    *,
    resend: bool,
    message_of: str | None = None,
    first_accepted_at: float | None = None,
) -> Accepted:
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
            resend=resend,
            message_of=message_of if ch is Channel.EMAIL else None,
            replay_of=replay_of,
            first_accepted_at=first_accepted_at,
        ).payload()
        for ch in channels
    }
    idem = request.idempotency_id
    incident = event_dedup_key(notification) if Channel.PAGERDUTY in channels else None
    try:
        first = engine.jobs.create(
            job_id,
            channels=channels,
            action=" + ".join(ACTION[c] for c in channels),
            source=source,
            payloads=payloads,
            team=request.team,
            notification=next(iter(payloads.values()))["notification"],
            replay_of=replay_of,
            idempotency=(idem, "reassign" if replay_of else "claim") if idem else None,
            dedup_key=incident,  # what `resolve` needs next, shown by `status`
            incident=incident,
        )
    except JobIdTakenError:
        problem = (
            f"job {job_id} was accepted already with a different notification (a message id "
            "sent twice): send each notification under a message id of its own"
        )
        raise JobIdReusedError([{"field": "id", "message": problem}]) from None
    if first is not None:
        # What the first job was queued for: this copy, whatever it asked, sends nothing.
        return _dropped(engine, job_id, first, engine.jobs.channels(first))
    named = ", ".join(c.value for c in channels)
    logger.info(
        "job %s accepted for %s",
        job_id,
        named,
        extra={"job_id": job_id, "outcome": "accepted", "channels": named},
    )
    return Accepted(job_id, channels=tuple(channels))


def refused(engine: Engine, source: str) -> None:
    """Count a notification refused as invalid at ``source``'s door. A count that cannot
    be written (Redis down) is dropped: it must not hide the refusal itself."""
    try:
        stats.add(engine.redis, [stats.count("notifications", source, "invalid")])
    except redis.RedisError:
        logger.debug("could not count a refusal at %s", source)


def lifecycle(
    engine: Engine,
    action: Literal["acknowledge", "resolve"],
    dedup_key: str,
    team: str | None,
    source: str,
    job_id: str | None = None,
) -> str:
    """Queue an acknowledge or resolve for ``dedup_key``, which came in through ``source``
    (the door: ``enqueue``, ``api``, ...); returns the job id (``job_id`` when given: one
    accepted already under it is not queued again)."""
    return lifecycle_once(engine, action, dedup_key, team, source, None, job_id).job_id


def lifecycle_once(
    engine: Engine,
    action: Literal["acknowledge", "resolve"],
    dedup_key: str,
    team: str | None,
    source: str,
    idempotency_id: str | None,
    job_id: str | None = None,
) -> Accepted:
    """As :func:`lifecycle`, and when ``idempotency_id`` is given, a copy of it accepted
    within the TTL queues nothing: the answer names the first job (a producer that sends
    the same resolve again, as Alertmanager does, spends no PagerDuty rate on it)."""
    if not dedup_key or not dedup_key.strip() or not is_one_line(dedup_key):
        raise InvalidJobError([{"field": "dedup_key", "message": "must be a non-blank line"}])
    if team is not None:
        try:
            check_team(team)
        except ValueError as exc:
            raise InvalidJobError([{"field": "team", "message": str(exc)}]) from None
    job_id = job_id or new_job_id()
    payload = DeliveryJob(
        job_id=job_id,
        channel=Channel.PAGERDUTY,
        action=action,
        dedup_key=dedup_key,
        team=team,
        enqueued_at=time.time(),
    ).payload()
    first = engine.jobs.create(
        job_id,
        channels=[Channel.PAGERDUTY],
        action=action,
        source=source,
        payloads={Channel.PAGERDUTY: payload},
        team=team,
        dedup_key=dedup_key,
        idempotency=(idempotency_id, "claim") if idempotency_id else None,
        incident=fit_dedup_key(dedup_key),
    )
    if first is not None:
        return _dropped(engine, job_id, first, (Channel.PAGERDUTY,))
    return Accepted(job_id, channels=(Channel.PAGERDUTY,))


def _dropped(engine: Engine, job_id: str, first: str, channels: tuple[Channel, ...]) -> Accepted:
    """Job ``job_id`` was a copy of ``first`` (same idempotency id): counted on the first's
    record and logged; the answer names the first."""
    engine.jobs.add_duplicate(first)
    logger.info(
        "job %s: duplicate of %s (idempotency id), dropped",
        job_id,
        first,
        extra={"job_id": job_id, "outcome": "duplicate", "duplicate_of": first},
    )
    return Accepted(first, duplicate=True, channels=channels)
