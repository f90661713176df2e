"""Delivery tasks, one per channel queue: ``deliver.pagerduty`` and ``deliver.email``.

Each run: skip if the job was already delivered (Redis redelivers after a worker dies),
deliver through worker/, record the attempt, then retry as the policy says or dead-letter.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from config.settings import get_settings
from tasks.schema import validation_errors
from worker import jobs
from worker.celery_app import app
from worker.dead_letters import DeadLetters
from worker.delivery import Deferred, DeliveryJob, deliver
from worker.exceptions import NotificationDeliveryError, NotificationError
from worker.jobs import JobStore
from worker.retry_policy import RetryPolicy

logger = logging.getLogger(__name__)

#: Failures of Redis itself (job state or broker): not the job's fault, never its attempt.
INFRASTRUCTURE_ERRORS = (redis.RedisError, OperationalError)


def run_delivery(task: Any, channel: str, payload: Any) -> str:
    store, dead = JobStore(), DeadLetters()
    policy = RetryPolicy.from_settings(get_settings())
    try:
        job = DeliveryJob.model_validate(payload)
    except ValidationError as exc:
        errors = validation_errors(exc)
        dead.add(
            entry_id=str(task.request.id),
            job_id=payload.get("job_id") if isinstance(payload, dict) else None,
            channel=channel,
            reason="invalid delivery job: "
            + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            payload=payload,
            last_error={"type": "ValidationError", "message": str(errors)},
        )
        return jobs.DEAD

    state, token = store.claim(job.job_id, channel, claim_seconds(channel))
    if state in jobs.FINAL_STATES:
        store.record_attempt(job.job_id, channel, attempt=None, outcome=f"skipped: {state}")
        return state
    if token is None:
        # A second copy of this message (redelivered, or re-queued by the recovery sweep)
        # while a worker delivers the first: come back when that one is surely done.
        wait = min(store.claim_remaining(job.job_id, channel) + 1.0, policy.hard_cap)
        store.record_attempt(
            job.job_id,
            channel,
            attempt=None,
            outcome="waiting: in another worker's hands",
            retry_in=wait,
        )
        raise task.retry(countdown=wait, max_retries=None)
    try:
        outcome = _attempt(task, job, channel, store, dead, policy, token)
    except BaseException:
        store.release(job.job_id, channel, token)
        raise
    if outcome != jobs.DELIVERED:  # a delivery's record released the claim already
        store.release(job.job_id, channel, token)
    return outcome


def claim_seconds(channel: str) -> float:
    """How long one delivery attempt can take, at most, on a live worker."""
    settings = get_settings()
    if channel == "pagerduty":
        return 2 * settings.pagerduty_timeout + 5
    return 4 * settings.smtp_timeout + 5


def _attempt(
    task: Any,
    job: DeliveryJob,
    channel: str,
    store: JobStore,
    dead: DeadLetters,
    policy: RetryPolicy,
    claim: str,
) -> str:
    started = time.monotonic()
    try:
        result = deliver(job)
    except Deferred as deferred:
        delay = policy.deferral(deferred.wait)
        store.set_state(job.job_id, channel, jobs.DEFERRED, quiet_for=delay)
        store.record_attempt(job.job_id, channel, attempt=None, outcome="deferred", retry_in=delay)
        store.release(job.job_id, channel, claim)  # before the retry exists to want it
        raise task.retry(countdown=delay, max_retries=None) from None
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        error = exc if isinstance(exc, NotificationError) else _unexpected(exc)
        return _failed(task, job, channel, error, started, store, dead, policy, claim)

    latency = (time.monotonic() - started) * 1000
    store.record_delivery(
        job.job_id,
        channel,
        latency_ms=latency,
        result={"message_id": result.message_id, **result.metadata},
        claim=claim,
    )
    return jobs.DELIVERED


def _failed(
    task: Any,
    job: DeliveryJob,
    channel: str,
    error: NotificationError,
    started: float,
    store: JobStore,
    dead: DeadLetters,
    policy: RetryPolicy,
    claim: str,
) -> str:
    attempt = store.next_attempt(job.job_id, channel)
    latency = (time.monotonic() - started) * 1000
    decision = policy.decide(error, attempt, age=time.time() - job.enqueued_at)
    store.record_attempt(
        job.job_id,
        channel,
        attempt=attempt,
        outcome="failed",
        latency_ms=latency,
        error=error.to_dict(),
        retry_in=decision.delay if decision.retry else None,
    )
    if decision.retry:
        store.set_state(
            job.job_id, channel, jobs.RETRYING, quiet_for=decision.delay, error=error.to_dict()
        )
        logger.info("job %s %s attempt %d: %s", job.job_id, channel, attempt, decision.reason)
        # Released before the retry is published: with a short countdown another thread
        # can take the retry before this one gets back to release it.
        store.release(job.job_id, channel, claim)
        raise task.retry(countdown=decision.delay, max_retries=None)
    dead.add(
        entry_id=f"{job.job_id}-{channel}",
        job_id=job.job_id,
        channel=channel,
        reason=decision.reason,
        payload=job.model_dump(mode="json"),
        attempts=attempt,
        last_error=error.to_dict(),
        first_seen=job.enqueued_at,
    )
    store.set_state(job.job_id, channel, jobs.DEAD, error=error.to_dict())
    logger.warning("job %s %s dead-lettered: %s", job.job_id, channel, decision.reason)
    return jobs.DEAD


def _unexpected(exc: Exception) -> NotificationError:
    """A failure outside the exception tree (a bug, a library surprise): retried like a
    transient error, never silently dropped."""
    logger.exception("unexpected delivery failure")
    return NotificationDeliveryError(
        f"unexpected {type(exc).__name__}: {exc}", retryable=True, provider="worker"
    )


def requeue_on_outage(task: Any, channel: str, payload: Any) -> str:
    """Run the delivery; if Redis itself fails underneath us, put the message back on the
    queue instead of letting Celery count a failure (which would acknowledge and lose it).
    While Redis is unreachable the message stays in Redis's own unacked set, and comes
    back after the visibility timeout."""
    try:
        return run_delivery(task, channel, payload)
    except INFRASTRUCTURE_ERRORS as exc:
        logger.warning("redis unavailable during %s delivery; requeueing: %s", channel, exc)
        time.sleep(1.0)  # do not spin while Redis restarts
        raise Reject(exc, requeue=True) from None


@app.task(bind=True, name="deliver.pagerduty", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_pagerduty(self: Any, job: Any) -> str:
    """Send one PagerDuty event (trigger, acknowledge or resolve) for a job."""
    return requeue_on_outage(self, "pagerduty", job)


@app.task(bind=True, name="deliver.email", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_email(self: Any, job: Any) -> str:
    """Send one email for a job."""
    return requeue_on_outage(self, "email", job)
