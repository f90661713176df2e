"""Heartbeat tasks: ``heartbeat`` (a service says it is alive, from any Celery client) and
``heartbeat.check`` (scheduled by ``celery -A worker beat`` every
``HEARTBEAT_CHECK_INTERVAL`` seconds).

Any Celery client, any language::

    send_task("heartbeat", args=["billing-api"])   # or kwargs={"slug": ..., "status": "fail"}

A heartbeat for a slug the catalogue does not list is refused with a clear error and
counted (``gds-notify heartbeats`` shows the counts); it is never stored.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals

from config.queues import HEARTBEAT_TASK
from worker.celery_app import app
from worker.engine.heartbeats import reports
from worker.engine.heartbeats.paging import run_check
from worker.engine.heartbeats.store import HeartbeatInFutureError
from worker.engine.runtime import engine
from worker.exceptions import NotificationConfigError

logger = logging.getLogger(__name__)

ARGUMENTS = ("slug", "status", "at")


@app.task(name=HEARTBEAT_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def heartbeat_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``heartbeat(slug, status="up", at=None)`` for any Celery client. A refusal is logged
    and counted, never retried."""
    if len(args) > len(ARGUMENTS) or set(kwargs) - set(ARGUMENTS):
        reason = "heartbeat takes slug, and optionally status and at"
        engine().heartbeats.refuse("invalid")
        logger.warning("heartbeat refused: %s", reason)
        return {"refused": reason}
    fields: dict[str, Any] = dict(zip(ARGUMENTS, args, strict=False)) | kwargs
    try:
        at = reports.record(
            engine(), fields.get("slug"), fields.get("status", "up"), fields.get("at")
        )
    except (
        NotificationConfigError,
        reports.InvalidHeartbeatError,
        HeartbeatInFutureError,
    ) as exc:
        logger.warning("heartbeat refused: %s", exc)
        return {"refused": str(exc)}
    return {"slug": fields["slug"], "at": at}


@app.task(name="heartbeat.check", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def check() -> dict[str, Any]:
    """Evaluate every service in the catalogue once; queue the pages that calls for."""
    report = run_check(engine())
    if report is None:
        return {"skipped": "HEARTBEAT_SERVICES_FILE is not set"}
    return {"skipped": report.skipped, "changed": report.changed, "sent": len(report.sent)}


@signals.worker_init.connect  # type: ignore[untyped-decorator,unused-ignore]
@signals.beat_init.connect  # type: ignore[untyped-decorator,unused-ignore]
def _validate_catalogue_at_start(**kwargs: Any) -> None:
    # A bad catalogue stops the worker or scheduler at start, naming the service and field.
    # Celery logs and swallows exceptions from signal handlers, so exit explicitly.
    try:
        engine().catalogue()
        if refused := engine().catalogue_refused():
            raise NotificationConfigError(refused)
    except NotificationConfigError as exc:
        logger.critical("cannot start: %s", exc)
        sys.stderr.write(f"gds-notification cannot start: {exc}\n")
        raise SystemExit(2) from None
