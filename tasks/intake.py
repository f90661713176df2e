"""``notify``: intake for producers in any language, via
``send_task("notify", args=[{...}])``. It ends where ``tasks.enqueue`` does, in
:func:`worker.engine.intake.accept`; what cannot be accepted is dead-lettered with the
reason and the task fails with it (FAILURE in Flower), never retried, and never crashes
the worker."""

from __future__ import annotations

import logging
from typing import Any

from config.queues import NOTIFY_TASK
from worker.celery_app import app
from worker.engine import intake
from worker.engine.dead_letters import bounded
from worker.engine.delivery import Outcome, OutcomeKind
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError, parse_request
from worker.task_base import NotifierTask

logger = logging.getLogger(__name__)


@app.task(bind=True, name=NOTIFY_TASK, max_retries=None, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def notify(self: NotifierTask, *args: Any, **kwargs: Any) -> str:
    """Intake for producers in any language: one argument, the job as a JSON object."""
    job_id = intake.job_id_for_task(self.request.id) if self.request.id else intake.new_job_id()
    dead_letters = engine().dead_letters
    if len(args) != 1 or kwargs:
        reason = (
            "invalid payload: notify takes exactly one argument, the job as a JSON object "
            f"(got {len(args)} positional and {len(kwargs)} keyword arguments)"
        )
        dead_letters.add(
            entry_id=job_id,
            job_id=None,
            channel="intake",
            reason=reason,
            payload=bounded({"args": list(args), "kwargs": kwargs}),
        )
    else:
        try:
            request = parse_request(args[0])
            return intake.accept(engine(), request, job_id, "notify").job_id
        except InvalidJobError as exc:
            reason = str(exc)
            dead_letters.add(
                entry_id=job_id,
                job_id=None,
                channel="intake",
                reason=reason,
                payload=bounded({"args": list(args)}),
                last_error={"type": "InvalidJobError", "message": reason, "errors": exc.errors},
            )
    intake.refused(engine(), "notify")
    logger.warning("job %s dead-lettered at intake: %s", job_id, reason)
    # Settled outside the except block, so the failure carries the reason alone, not a
    # chain of tracebacks.
    return self.settle(Outcome(OutcomeKind.DEAD, reason=reason))
