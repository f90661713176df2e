"""The recovery sweep on beat: publish again what the broker lost (see worker/recovery.py)."""

from __future__ import annotations

import logging

from tasks.intake import publish
from worker.celery_app import app
from worker.delivery import DeliveryJob
from worker.recovery import stalled

logger = logging.getLogger(__name__)


@app.task(name="jobs.recover", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def recover() -> int:
    """Re-queue deliveries with no progress for ``JOB_STALL_SECONDS``; returns how many."""
    count = 0
    for item in stalled():
        publish(DeliveryJob.model_validate(item.payload))
        logger.warning(
            "job %s %s: no progress for %.0f s, re-queued (the broker lost its message?)",
            item.job_id,
            item.channel,
            item.idle_seconds,
        )
        count += 1
    return count
