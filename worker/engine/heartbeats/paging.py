"""The checker's pages go out like any other job: through intake, the delivery queue,
its retries, rate limit and dead letters. A reported failure asks for a check at once."""

from __future__ import annotations

import logging
import time

from worker.engine import keys
from worker.engine.heartbeats.checker import CheckReport, Sender
from worker.engine.heartbeats.evaluation import Action
from worker.engine.intake import accept, lifecycle, new_job_id
from worker.engine.messages import check_message
from worker.engine.runtime import Engine
from worker.job_request import parse_request

logger = logging.getLogger(__name__)

#: How long a check that found no catalogue is remembered.
IDLE_KEPT_SECONDS = 86_400


def sender(engine: Engine) -> Sender:
    """What the checker hands each action to: it queues the page, returns the job id."""

    def send(action: Action) -> str:
        if action.kind == "trigger":
            if action.request is None:
                raise ValueError("a heartbeat trigger needs its request")
            request = parse_request(action.request)
            return accept(engine, request, new_job_id(), "heartbeat").job_id
        return lifecycle(engine, "resolve", action.dedup_key, action.team, "heartbeat")

    return send


def run_check(engine: Engine) -> CheckReport | None:
    """One heartbeat evaluation over the whole catalogue (None when none is configured)."""
    catalogue = engine.catalogue()
    if catalogue is None:
        # Said where `gds-notify heartbeats` looks, so a catalogue given to the shell but
        # not to the worker is named as the cause.
        pipe = engine.redis.pipeline(transaction=False)
        pipe.set(keys.HEARTBEAT_CHECK_IDLE, repr(time.time()), ex=IDLE_KEPT_SECONDS)
        pipe.delete(keys.HEARTBEAT_SUMMARY)  # monitoring is off: no states to report
        pipe.execute()
        return None
    complete = engine.file_catalogue() is not None
    report = engine.checker.run(catalogue, sender(engine), complete)
    if report.sent or report.send_errors or report.conflicts:
        logger.info(
            "heartbeat check: %d services, %d changed, %d pages queued, %d not sent, %d conflicts",
            report.services,
            report.changed,
            len(report.sent),
            report.send_errors,
            report.conflicts,
        )
    return report


#: At most one early check is queued per this many milliseconds, however many failures
#: arrive: a flood of failures costs one check, not one each.
EARLY_CHECK_MS = 1000


def check_soon(engine: Engine) -> None:
    """A service reported a failure: run a check now rather than at the next tick."""
    if engine.redis.set(keys.HEARTBEAT_CHECK_SOON, "1", nx=True, px=EARLY_CHECK_MS):
        queue, message = check_message()
        engine.redis.lpush(queue, message)
