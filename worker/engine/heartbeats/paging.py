"""The checker's pages go out like any other job: through intake, the delivery queue,
its retries, rate limit and dead letters. A reported failure asks for a check at once."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from worker.engine import keys
from worker.engine.heartbeats.checker import CheckReport, Sender
from worker.engine.heartbeats.evaluation import REPORTED_FAIL, Action, quoted
from worker.engine.intake import accept, lifecycle, new_job_id, refused
from worker.engine.messages import check_message
from worker.engine.runtime import Engine
from worker.job_request import InvalidJobError, parse_request

logger = logging.getLogger(__name__)

#: How long a check that found no catalogue is remembered.
IDLE_KEPT_SECONDS = 86_400


def sender(engine: Engine) -> Sender:
    """What the checker hands each action to: it queues the page, returns the job id. A
    page intake refuses is dead-lettered with the reason (the letter's id is returned):
    kept in the service's outbox, it would be refused at every check, and hold back every
    page after it."""

    def send(action: Action) -> str:
        try:
            if action.kind == "trigger":
                request = parse_request(_with_report(engine, action.request))
                return accept(engine, request, new_job_id(), "heartbeat").job_id
            return lifecycle(engine, "resolve", action.dedup_key, action.team, "heartbeat")
        except InvalidJobError as exc:
            return _refused(engine, action, exc)

    return send


def _with_report(engine: Engine, request: dict[str, Any] | None) -> dict[str, Any] | None:
    """A reported failure's page with what the service said: how (``/fail``, an exit
    status, Medic's DOWN) and, for a file entry with ``page_output``, the start of the
    output its job posted, so the responder need not look it up first. The request as it
    is when there is no such report, or when the check that opened it had the failure in
    hand already (it says so itself: a page for a failure the service has recovered from
    since would find the success here, not the failure)."""
    if request is None:
        return None
    details = request.get("metadata", {}).get("custom_details", {})
    slug = details.get("slug")
    if (
        details.get("reason") != REPORTED_FAIL
        or "reported_via" in details
        or not isinstance(slug, str)
    ):
        return request
    try:
        # The newest failure among the last pings: a /log or /start may have followed it.
        report = next((p for p in engine.heartbeats.log(slug, 5) if p.get("kind") == "fail"), None)
    except redis.RedisError:  # the page goes out all the same, without the report
        logger.warning("heartbeat %s: its last report could not be read", slug)
        return request
    if report is None:
        return request
    added: dict[str, Any] = {"reported_via": report.get("via") or "fail"}
    output = str(report.get("body") or "")
    if output and getattr(engine.service(slug), "page_output", False):
        added["reported_output"] = quoted(output)
    metadata = dict(request["metadata"])
    metadata["custom_details"] = {**details, **added}
    return {**request, "metadata": metadata}


def _refused(engine: Engine, action: Action, exc: InvalidJobError) -> str:
    reason = f"heartbeat {action.kind} for {action.dedup_key} refused at intake: {exc}"
    payload: dict[str, Any]
    if action.kind == "trigger":
        channel, payload = "intake", {"args": [action.request]}
    else:  # replayed as the resolve it is
        channel = "pagerduty"
        payload = {"action": "resolve", "dedup_key": action.dedup_key, "team": action.team}
    # One letter however often a crash makes the checker send this action again.
    entry_id = keys.digest(action.model_dump_json(), 32)
    engine.dead_letters.add(
        entry_id=entry_id,
        job_id=None,
        channel=channel,
        reason=reason,
        payload=payload,
        last_error={"type": "InvalidJobError", "message": str(exc), "errors": exc.errors},
    )
    refused(engine, "heartbeat")
    logger.error("%s; dead-lettered as %s", reason, entry_id)
    return entry_id


def run_check(engine: Engine) -> CheckReport | None:
    """One heartbeat evaluation over the whole catalogue (None when none is configured)."""
    # A failure reported from now on is one this check may not see: it asks for the next.
    # (Held until its check ran, a second failure within the second after the first one's
    # check waited for the next tick, a minute by default.)
    engine.redis.delete(keys.HEARTBEAT_CHECK_SOON)
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


#: At most one early check waits at a time, however many failures arrive (a flood costs
#: one check, not one each); it is forgotten when it starts, or after this long if its
#: message was lost.
EARLY_CHECK_MS = 1000


def check_soon(engine: Engine) -> None:
    """A service reported a failure: run a check now rather than at the next tick."""
    if engine.redis.set(keys.HEARTBEAT_CHECK_SOON, "1", nx=True, px=EARLY_CHECK_MS):
        queue, message = check_message()
        engine.redis.lpush(queue, message)
