"""Delivery tasks, one per channel queue: ``deliver.pagerduty`` and ``deliver.email``.

Each runs one delivery step (:func:`worker.engine.delivery.deliver`) and settles its
outcome (:meth:`worker.task_base.NotifierTask.settle`): a message that must come back is
retried after the outcome's delay; a dead-lettered job fails the task with its reason;
anything else succeeds. Every ending but a retry acknowledges the message.
"""

from __future__ import annotations

from typing import Any

from worker.celery_app import app
from worker.engine.delivery import deliver
from worker.engine.runtime import engine
from worker.task_base import NotifierTask


def run(task: NotifierTask, channel: str, payload: Any) -> str:
    """One delivery step for the message ``task`` is running, settled as Celery state."""
    return task.settle(deliver(engine(), payload, str(task.request.id), channel))


@app.task(bind=True, name="deliver.pagerduty", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_pagerduty(self: NotifierTask, job: Any) -> str:
    """Send one PagerDuty event (trigger, acknowledge or resolve) for a job."""
    return run(self, "pagerduty", job)


@app.task(bind=True, name="deliver.email", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def deliver_email(self: NotifierTask, job: Any) -> str:
    """Send one email for a job."""
    return run(self, "email", job)
