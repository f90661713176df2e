"""Delivery tasks, one per channel queue: ``deliver.pagerduty`` and ``deliver.email``.

Each runs one delivery step (:func:`worker.engine.delivery.deliver`) and turns its outcome
into Celery's terms: a message that must come back is retried after the outcome's delay;
anything else is acknowledged.
"""

from __future__ import annotations

from typing import Any

from worker.celery_app import app
from worker.engine.delivery import Outcome, deliver
from worker.engine.runtime import engine


def run(task: Any, channel: str, payload: Any) -> str:
    outcome: Outcome = deliver(engine(), payload, str(task.request.id), channel)
    if outcome.delay is not None:
        raise task.retry(countdown=outcome.delay, max_retries=None)
    return outcome.kind.value


@app.task(bind=True, name="deliver.pagerduty", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_pagerduty(self: Any, job: Any) -> str:
    """Send one PagerDuty event (trigger, acknowledge or resolve) for a job."""
    return run(self, "pagerduty", job)


@app.task(bind=True, name="deliver.email", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_email(self: Any, job: Any) -> str:
    """Send one email for a job."""
    return run(self, "email", job)
