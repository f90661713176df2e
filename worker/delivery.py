"""Delivering one job to one channel: the rate limiter, then the provider. Knows nothing
of Celery; the task in tasks/delivery.py decides what happens after a failure."""

from __future__ import annotations

import random
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

from config.routing import Channel
from config.settings import get_settings
from worker import provider_pool
from worker.exceptions import NotificationDeliveryError, NotificationRateLimitError
from worker.providers.base import Notification, NotificationResult
from worker.providers.pagerduty import PagerDutyProvider
from worker.rate_limit import Slot, shared_limiter

#: How long a worker waits in place for a rate-limit slot before putting the job aside.
INLINE_WAIT_SECONDS = 2.0


class DeliveryJob(BaseModel):
    """What a delivery task carries: never a secret, only the team that names one."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    channel: Channel
    action: Literal["trigger", "acknowledge", "resolve", "send"]
    notification: Notification | None = None
    dedup_key: str | None = None
    team: str | None = None
    email_to: str | None = None
    enqueued_at: float


class Deferred(Exception):
    """Our own rate limiter says: not now, try again in ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limit: next slot in {wait:.2f}s")
        self.wait = wait


def deliver(job: DeliveryJob) -> NotificationResult:
    """Send the job over its channel; raise a NotificationError or Deferred."""
    if job.channel is Channel.PAGERDUTY:
        return _page(job)
    return _email(job)


def _page(job: DeliveryJob) -> NotificationResult:
    routing_key = get_settings().routing_key_for(job.team)
    raw_key = routing_key.get_secret_value()
    limiter = shared_limiter()
    give_up_at = time.monotonic() + INLINE_WAIT_SECONDS
    while not isinstance(slot := limiter.acquire(raw_key), Slot):
        if time.monotonic() + slot > give_up_at:
            raise Deferred(slot)
        time.sleep(slot + random.uniform(0, 0.005))  # noqa: S311
    provider = provider_pool.pagerduty(routing_key)
    try:
        return _send_event(job, provider)
    except NotificationRateLimitError as exc:
        # One worker was told to slow down: every worker slows down for this key.
        limiter.pause(raw_key, exc.retry_after_seconds or get_settings().retry_base_seconds)
        raise
    finally:
        slot.arrived()


def _send_event(job: DeliveryJob, provider: PagerDutyProvider) -> NotificationResult:
    if job.action == "trigger":
        if job.notification is None:
            raise _malformed(job, "a trigger needs a notification")
        return provider.trigger(job.notification)
    if job.action in ("acknowledge", "resolve"):
        if not job.dedup_key:
            raise _malformed(job, f"{job.action} needs a dedup_key")
        verb = provider.acknowledge if job.action == "acknowledge" else provider.resolve
        return verb(job.dedup_key)
    raise _malformed(job, f"action {job.action!r} is not a PagerDuty event")


def _email(job: DeliveryJob) -> NotificationResult:
    if job.notification is None or job.action not in ("send", "trigger"):
        raise _malformed(job, "an email needs a notification")
    notification = job.notification
    if job.email_to:
        notification = notification.model_copy(update={"recipient": job.email_to})
    return provider_pool.smtp().send(notification)


def _malformed(job: DeliveryJob, problem: str) -> NotificationDeliveryError:
    return NotificationDeliveryError(
        f"job {job.job_id} cannot be delivered: {problem}", retryable=False, provider=job.channel
    )
