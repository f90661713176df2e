"""Delivering one job to one channel, start to finish, as one step that returns an outcome.

:func:`deliver` takes a delivery task's payload and does everything a worker does for it:
validate it, claim the delivery (so two copies never deliver at once), ask the shared rate
limiter, call the provider, and record what happened. It knows nothing of Celery: the task
turns the :class:`Outcome` into an acknowledgement or a retry. Failures of Redis itself are
the one thing it raises (nothing can be recorded then); the Celery task base class puts the
message back.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from worker.channels import Channel
from worker.engine import jobs, refused_recipients, stats, watchdog
from worker.engine.dead_letters import dead_letter_id
from worker.engine.delivery_job import DeliveryJob
from worker.engine.jobs import Claim
from worker.engine.rate_limit import SharedRateLimiter, Slot
from worker.engine.runtime import Engine
from worker.exceptions import (
    NotificationDeliveryError,
    NotificationError,
    NotificationRateLimitError,
)
from worker.notification import NotificationResult
from worker.providers.smtp import attempt_seconds
from worker.validation import validation_errors

logger = logging.getLogger(__name__)

#: How long a worker waits in place for a rate-limit slot before putting the job aside.
INLINE_WAIT_SECONDS = 2.0
#: How long an event waits for the one queued before it for the same incident: one still
#: queued goes out soon; one retrying or deferred may take a while.
ORDER_WAIT_SECONDS = {True: 0.5, False: 5.0}


class OutcomeKind(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # failed, worth another try in ``delay`` seconds
    DEFERRED = "deferred"  # our own rate limiter says: not before ``delay`` seconds
    BUSY = "busy"  # another worker holds it, or an earlier event for its incident is on its
    # way: look again in ``delay`` seconds
    DEAD = "dead"  # dead-lettered, with ``reason``
    SKIPPED = "skipped"  # already delivered or dead: a redelivered copy, nothing to do


@dataclass(frozen=True)
class Outcome:
    """How one delivery step ended. ``delay`` is set when the message should come back."""

    kind: OutcomeKind
    delay: float | None = None
    reason: str | None = None

    @property
    def again(self) -> bool:
        """Whether the message must be delivered again after ``delay`` seconds."""
        return self.delay is not None


def deliver(engine: Engine, payload: Any, message_id: str, channel_hint: str) -> Outcome:
    """Run one delivery step for the delivery message ``message_id`` carrying ``payload``.
    ``channel_hint`` (the task's own channel) names the channel only of a payload too
    broken to name its own."""
    try:
        job = DeliveryJob.model_validate(payload)
    except ValidationError as exc:
        return _invalid(engine, payload, message_id, channel_hint, exc)
    ttl = claim_seconds(engine, job.channel)
    with engine.jobs.claim(job.job_id, job.channel, ttl, rate=_rate(engine, job)) as claim:
        if claim.final:
            engine.jobs.record(job.job_id, job.channel, f"skipped: {claim.state}")
            return Outcome(OutcomeKind.SKIPPED, reason=claim.state)
        if claim.busy:
            # A second copy of this message (redelivered, or re-queued by the recovery
            # sweep) while a worker delivers the first: come back when that one is done.
            wait = min(
                engine.jobs.claim_remaining(job.job_id, job.channel) + 1.0,
                engine.retry_policy.hard_cap,
            )
            engine.jobs.record(
                job.job_id,
                job.channel,
                "waiting: in another worker's hands",
                retry_in=wait,
            )
            return Outcome(OutcomeKind.BUSY, delay=wait)
        if claim.waiting_for is not None:
            # Events for one incident go out in the order queued: a resolve that overtook
            # its trigger would be dropped by PagerDuty, and the trigger would then open
            # an incident nobody resolves.
            wait = ORDER_WAIT_SECONDS[claim.waiting_for == jobs.QUEUED]
            if claim.waiting_until is not None:
                # No sooner than its next try (a retry's countdown, a deferral): a resolve
                # behind a trigger retrying through an outage would otherwise look every
                # few seconds for as long as an hour.
                until = claim.waiting_until - time.time() + ORDER_WAIT_SECONDS[True]
                wait = max(wait, min(until, engine.retry_policy.hard_cap))
            # Its own next look is recorded as due: the event queued after it reads that,
            # and the recovery sweep does not take a long wait for a stall.
            engine.jobs.record(
                job.job_id,
                job.channel,
                f"waiting: the event queued before it is {claim.waiting_for}",
                retry_in=wait,
                due_in=wait,
            )
            return Outcome(OutcomeKind.BUSY, delay=wait)
        return _attempt(engine, job, claim)


def _rate(engine: Engine, job: DeliveryJob) -> tuple[SharedRateLimiter, str] | None:
    """The limiter and key a page asks for its slot with, so that the slot comes in the
    claim's round trip; None for email, the canary, or a team with no key (the attempt
    finds that out and says so)."""
    if job.channel is not Channel.PAGERDUTY or job.action == "canary":
        return None
    try:
        return engine.limiter, engine.settings.routing_key_for(job.team).get_secret_value()
    except NotificationError:
        return None


def claim_seconds(engine: Engine, channel: Channel) -> float:
    """How long one delivery attempt can take, at most, on a live worker."""
    settings = engine.settings
    if channel is Channel.PAGERDUTY:
        return 2 * settings.pagerduty_timeout + 5
    return attempt_seconds(settings.smtp_timeout, settings.smtp_data_wait) + 5


class ProviderCall:
    """The provider's call under way: when it began (after any inline wait for a rate-limit
    slot, so its latency is the provider's alone), and the slot it used, which the record
    of its outcome re-stamps."""

    def __init__(self, claim: Claim) -> None:
        self.started = time.monotonic()
        self.offered = claim.slot
        self.slot: Slot | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started


def _canary(engine: Engine, job: DeliveryJob, claim: Claim) -> Outcome:
    """The watchdog's canary came through the pipeline: call the watchdog, and end."""
    try:
        result, reason = watchdog.arrived(engine, job.enqueued_at)
    except NotificationError as exc:
        engine.jobs.record(
            job.job_id,
            job.channel,
            "failed",
            state=jobs.DEAD,
            error=exc.to_dict(),
            claim=claim.lock,
        )
        logger.warning("watchdog: %s", exc)
        return Outcome(OutcomeKind.DEAD, reason=f"watchdog not told: {exc}")
    outcome = f"watchdog {result}" + (f": {reason}" if reason else "")
    engine.jobs.record(job.job_id, job.channel, outcome, state=jobs.DELIVERED, claim=claim.lock)
    return Outcome(OutcomeKind.DELIVERED)


def _attempt(engine: Engine, job: DeliveryJob, claim: Claim) -> Outcome:
    if job.action == "canary":
        return _canary(engine, job, claim)
    clock = ProviderCall(claim)
    try:
        sent = _send(engine, job, clock)
    except NotificationError as exc:
        return _failed(engine, job, claim, exc, clock)
    except redis.RedisError:
        raise  # Redis itself: nothing can be recorded, the message goes back (task_base.py)
    except Exception as exc:
        # A failure outside the exception tree (a bug, a library surprise): retried like
        # a transient error, never silently dropped.
        logger.exception("unexpected delivery failure")
        error = NotificationDeliveryError(
            f"unexpected {type(exc).__name__}: {exc}", retryable=True, provider="worker"
        )
        return _failed(engine, job, claim, error, clock)
    channel = job.channel.value
    if isinstance(sent, float):
        delay = engine.retry_policy.deferral(sent)
        engine.jobs.record(
            job.job_id,
            job.channel,
            jobs.DEFERRED,
            state=jobs.DEFERRED,
            quiet_for=delay,
            retry_in=delay,
            claim=claim.lock,
            counters=[
                stats.count("deliveries", channel, "deferred"),
                stats.count("pagerduty_deferred", stats.team_label(engine.settings, job.team)),
            ],
        )
        return Outcome(OutcomeKind.DEFERRED, delay=delay)
    call = clock.seconds()
    result = {"message_id": sent.message_id, **sent.metadata}
    refused = sent.metadata.get("refused")
    if job.channel is Channel.EMAIL and isinstance(refused, dict) and refused:
        try:
            refused_addresses = {a: str(w) for a, w in refused.items()}
            result |= refused_recipients.follow_up(engine, job, refused_addresses)
        except redis.RedisError:
            raise  # nothing can be recorded either: the message goes back (task_base.py)
        except Exception:
            # The message went out: a failed follow-up must not keep its record from
            # being written, or the sweep would send it to everyone again. The refused
            # addresses stay in the result, and in status.
            logger.exception("job %s email: following up refused recipients failed", job.job_id)
    engine.jobs.record(
        job.job_id,
        job.channel,
        jobs.DELIVERED,
        state=jobs.DELIVERED,
        counted=True,
        latency_ms=call * 1000,
        result=result,
        claim=claim.lock,
        arrived=clock.slot,
        counters=[
            stats.count("deliveries", channel, "delivered"),
            *stats.observe("provider_call", channel, call),
            *stats.observe("delivery_latency", channel, time.time() - job.enqueued_at),
        ],
    )
    attempt = claim.attempts + 1
    logger.info(
        "job %s %s delivered at attempt %d in %.0f ms",
        job.job_id,
        job.channel,
        attempt,
        call * 1000,
        extra=_log_fields(job, attempt, OutcomeKind.DELIVERED, call * 1000),
    )
    return Outcome(OutcomeKind.DELIVERED)


def _log_fields(
    job: DeliveryJob, attempt: int, outcome: OutcomeKind, latency_ms: float
) -> dict[str, object]:
    """A delivery log line's fields (LOG_FORMAT=json shows them; text, its message)."""
    return {
        "job_id": job.job_id,
        "channel": job.channel.value,
        "attempt": attempt,
        "outcome": outcome.value,
        "latency_ms": round(latency_ms, 1),
    }


def _failure_counters(
    engine: Engine, job: DeliveryJob, error: NotificationError, outcome: str, call: float
) -> list[stats.Increment]:
    channel = job.channel.value
    counters = [
        stats.count("deliveries", channel, outcome),
        stats.count("delivery_failures", channel, type(error).__name__),
        *stats.observe("provider_call", channel, call),
    ]
    if isinstance(error, NotificationRateLimitError) and job.channel is Channel.PAGERDUTY:
        counters.append(
            stats.count("pagerduty_throttled", stats.team_label(engine.settings, job.team))
        )
    return counters


def _failed(
    engine: Engine, job: DeliveryJob, claim: Claim, error: NotificationError, clock: ProviderCall
) -> Outcome:
    attempt = claim.attempts + 1
    decision = engine.retry_policy.decide(error, attempt, age=time.time() - job.enqueued_at)
    call = clock.seconds()
    latency = call * 1000
    if decision.retry:
        engine.jobs.record(
            job.job_id,
            job.channel,
            "failed",
            state=jobs.RETRYING,
            counted=True,
            quiet_for=decision.delay,
            latency_ms=latency,
            error=error.to_dict(),
            retry_in=decision.delay,
            claim=claim.lock,
            arrived=clock.slot,
            counters=_failure_counters(engine, job, error, "retried", call),
        )
        logger.info(
            "job %s %s attempt %d: %s",
            job.job_id,
            job.channel,
            attempt,
            decision.reason,
            extra=_log_fields(job, attempt, OutcomeKind.RETRY, latency),
        )
        return Outcome(OutcomeKind.RETRY, delay=decision.delay, reason=decision.reason)
    engine.dead_letters.add(
        entry_id=dead_letter_id(job.job_id, job.channel),
        job_id=job.job_id,
        channel=job.channel,
        reason=decision.reason,
        payload=job.payload(),
        attempts=attempt,
        last_error=error.to_dict(),
        first_seen=job.accepted_at,
    )
    engine.jobs.record(
        job.job_id,
        job.channel,
        "failed",
        state=jobs.DEAD,
        counted=True,
        latency_ms=latency,
        error=error.to_dict(),
        claim=claim.lock,
        arrived=clock.slot,
        counters=_failure_counters(engine, job, error, "dead", call),
    )
    logger.warning(
        "job %s %s dead-lettered: %s",
        job.job_id,
        job.channel,
        decision.reason,
        extra=_log_fields(job, attempt, OutcomeKind.DEAD, latency),
    )
    return Outcome(OutcomeKind.DEAD, reason=decision.reason)


def _invalid(
    engine: Engine, payload: Any, message_id: str, channel_hint: str, exc: ValidationError
) -> Outcome:
    errors = validation_errors(exc)
    named = payload.get("channel") if isinstance(payload, dict) else None
    reason = "invalid delivery job: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    engine.dead_letters.add(
        entry_id=message_id,
        job_id=payload.get("job_id") if isinstance(payload, dict) else None,
        channel=named if named in tuple(Channel) else channel_hint,
        reason=reason,
        payload=payload,
        last_error={"type": "ValidationError", "message": str(errors), "errors": errors},
    )
    return Outcome(OutcomeKind.DEAD, reason=reason)


# -- the channels ---------------------------------------------------------------------


def _send(engine: Engine, job: DeliveryJob, clock: ProviderCall) -> NotificationResult | float:
    """The provider's result, or the seconds our own rate limiter says to wait first."""
    if job.channel is Channel.PAGERDUTY:
        return _page(engine, job, clock)
    return _email(engine, job)


def _page(engine: Engine, job: DeliveryJob, clock: ProviderCall) -> NotificationResult | float:
    routing_key = engine.settings.routing_key_for(job.team)
    raw_key = routing_key.get_secret_value()
    give_up_at = time.monotonic() + INLINE_WAIT_SECONDS
    slot = clock.offered if clock.offered is not None else engine.limiter.acquire(raw_key)
    while not isinstance(slot, Slot):
        if time.monotonic() + slot > give_up_at:
            return slot
        time.sleep(slot + random.uniform(0, 0.005))  # noqa: S311
        slot = engine.limiter.acquire(raw_key)
    clock.start()
    clock.slot = slot
    provider = engine.providers.pagerduty(routing_key)
    try:
        if job.action == "trigger":
            if job.notification is None:
                raise _malformed(job, "a trigger needs a notification")
            return provider.trigger(job.notification, at=_raised_at(job), replay_of=job.replay_of)
        if job.action in ("acknowledge", "resolve"):
            if not job.dedup_key:
                raise _malformed(job, f"{job.action} needs a dedup_key")
            verb = provider.acknowledge if job.action == "acknowledge" else provider.resolve
            return verb(job.dedup_key)
        raise _malformed(job, f"action {job.action!r} is not a PagerDuty event")
    except NotificationRateLimitError as exc:
        # One worker was told to slow down: every worker slows down for this key.
        engine.limiter.pause(
            raw_key, exc.retry_after_seconds or None, backoff=engine.settings.retry_base_seconds
        )
        raise


def _email(engine: Engine, job: DeliveryJob) -> NotificationResult:
    if job.notification is None or job.action not in ("send", "trigger"):
        raise _malformed(job, "an email needs a notification")
    notification = job.notification
    if job.email_to:
        notification = notification.model_copy(update={"recipient": job.email_to})
    # Dated when this job was accepted, so every retry of it is the same message; a replay
    # is dated now (a Date days old would sort it out of sight, and look like spam).
    sent_at = datetime.fromtimestamp(job.enqueued_at, UTC)
    return engine.providers.smtp().send(notification, job.message_of or job.job_id, at=sent_at)


def _raised_at(job: DeliveryJob) -> datetime:
    return datetime.fromtimestamp(job.accepted_at, UTC)


def _malformed(job: DeliveryJob, problem: str) -> NotificationDeliveryError:
    return NotificationDeliveryError(
        f"job {job.job_id} cannot be delivered: {problem}", retryable=False, provider=job.channel
    )
