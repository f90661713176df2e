"""The recovery sweep on beat: publish again what the broker lost (see
worker/engine/recovery.py)."""

from __future__ import annotations

import logging

from tasks.publish import publish
from worker.celery_app import app
from worker.channels import Channel
from worker.engine.intake import delivery_id
from worker.engine.recovery import stalled
from worker.engine.runtime import engine

logger = logging.getLogger(__name__)


@app.task(name="jobs.recover", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def recover() -> int:
    """Re-queue deliveries with no progress for ``JOB_STALL_SECONDS``; returns how many."""
    found = stalled(engine())
    for item in found:
        channel = Channel(item.channel)
        publish(channel, delivery_id(item.job_id, channel), item.payload)
        logger.warning(
            "job %s %s: no progress for %.0f s, re-queued (the broker lost its message?)",
            item.job_id,
            item.channel,
            item.idle_seconds,
        )
    return len(found)
