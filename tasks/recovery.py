"""The recovery sweep on beat: publish again what the broker lost (see
worker/engine/recovery.py)."""

from __future__ import annotations

import logging

from worker.celery_app import app
from worker.engine.intake_recovery import put_back
from worker.engine.recovery import recover as recover_stalled
from worker.engine.runtime import engine

logger = logging.getLogger(__name__)

#: The warning for each re-queued delivery, by why it was re-queued (``Stalled.reason``;
#: ``held`` for one lost with the worker that held it through a countdown).
WHY = {
    "lost": "no worker took it %(idle).0f s after it fell due, and its message is on no "
    "queue, in no worker's hands (the broker lost it): re-queued",
    "held": "its message was in the hands of worker %(holder)s, which has died or "
    "restarted since, %(idle).0f s after it fell due: re-queued",
    "abandoned": "an attempt begun %(idle).0f s ago recorded no outcome and its claim lapsed "
    "(its worker died?): re-queued",
    "stalled": "no progress for %(idle).0f s, re-queued (the broker lost its message?)",
}


@app.task(name="jobs.recover", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def recover() -> int:
    """Re-queue deliveries with no progress for ``JOB_STALL_SECONDS``, pages (or their
    retries) the broker lost before any worker took them or that a dead worker held
    through a countdown, deliveries whose worker died in an attempt, and intake messages
    a dead worker held; returns how many."""
    found = recover_stalled(engine())
    for item in found:
        why = WHY["held" if item.holder else item.reason]
        logger.warning(
            "job %s %s: %s",
            item.job_id,
            item.channel,
            why % {"idle": item.idle_seconds, "holder": item.holder},
        )
    # After the deliveries, so that nothing an intake message holds can keep them waiting.
    intake = put_back(engine())
    for message in intake:
        logger.warning(
            "%s %s: in a worker's hands %.0f s after it fell due, though intake takes"
            " milliseconds (its worker died?): put back on its queue",
            message.task,
            message.task_id,
            message.held_seconds,
        )
    return len(intake) + len(found)
