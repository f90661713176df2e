"""Heartbeat tasks: ``heartbeat`` (a service says it is alive) and ``heartbeat.check``
(scheduled by ``celery -A worker beat`` every ``HEARTBEAT_CHECK_INTERVAL`` seconds).

Producers::

    import tasks
    tasks.heartbeat("billing-api")                 # or status="fail", at=datetime/epoch/ISO

    # any Celery client, any language:
    send_task("heartbeat", args=["billing-api"])   # or kwargs={"slug": ..., "status": "fail"}

A heartbeat for a slug the catalogue does not list is refused with a clear error and
counted (``gds-notify heartbeats`` shows the counts); it is never stored.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import redis
from celery import signals
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from config.catalogue import Catalogue, UnknownServiceError, get_catalogue
from config.settings import get_settings
from tasks.intake import accept, lifecycle, new_job_id
from tasks.schema import parse_request
from worker.celery_app import app
from worker.exceptions import NotificationConfigError
from worker.heartbeats.checker import CheckReport, HeartbeatChecker
from worker.heartbeats.evaluation import Action
from worker.heartbeats.store import HeartbeatInFutureError, HeartbeatStatus, HeartbeatStore
from worker.redis_store import get_redis

logger = logging.getLogger(__name__)


class InvalidHeartbeatError(ValueError):
    """A heartbeat whose ``status`` or ``at`` cannot be used; the message names the field."""


def configured_catalogue() -> Catalogue:
    catalogue = get_catalogue()
    if catalogue is None:
        raise NotificationConfigError(
            "heartbeat monitoring is not configured: HEARTBEAT_SERVICES_FILE is not set"
        )
    return catalogue


def parse_status(status: Any) -> HeartbeatStatus:
    if status in ("up", "fail"):
        return status  # type: ignore[no-any-return]
    raise InvalidHeartbeatError(f"status: must be 'up' or 'fail' (got {status!r})")


def parse_at(at: Any) -> float | None:
    """Epoch seconds from None, a number, an ISO 8601 string or a datetime (naive = UTC)."""
    if at is None:
        return None
    if isinstance(at, bool):
        raise InvalidHeartbeatError("at: must be an ISO 8601 time or epoch seconds")
    if isinstance(at, int | float):
        return float(at)
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidHeartbeatError(
                f"at: must be an ISO 8601 time or epoch seconds (got {at[:64]!r})"
            ) from None
    if isinstance(at, datetime):
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    raise InvalidHeartbeatError(
        f"at: must be an ISO 8601 time or epoch seconds, not {type(at).__name__}"
    )


def record(slug: Any, status: Any = "up", at: Any = None) -> float:
    """Validate and store one heartbeat; return its time (epoch seconds, Redis clock).

    Raises :class:`UnknownServiceError` for a slug not in the catalogue,
    :class:`InvalidHeartbeatError` for a bad ``status`` or ``at``, and
    :class:`NotificationConfigError` when no catalogue is configured.
    """
    catalogue = configured_catalogue()
    store = HeartbeatStore(get_redis())
    spec = catalogue.get(slug) if isinstance(slug, str) else None
    if spec is None:
        store.refuse("unknown_slug")
        shown = repr(slug[:100]) if isinstance(slug, str) else type(slug).__name__
        raise UnknownServiceError(
            f"slug: unknown service {shown}: not in the heartbeat catalogue "
            f"({len(catalogue.services)} services); heartbeat refused"
        )
    try:
        return store.record(spec, parse_status(status), parse_at(at))
    except (InvalidHeartbeatError, HeartbeatInFutureError):
        store.refuse("invalid")
        raise


def heartbeat(slug: str, status: str = "up", at: Any = None) -> float:
    """Record a heartbeat for ``slug`` (Python producers); returns its epoch time.

    ``status`` is "up" or "fail"; ``at`` (a datetime, ISO 8601 string or epoch seconds)
    defaults to now.
    Runs in the caller (which needs ``HEARTBEAT_SERVICES_FILE`` and ``REDIS_URL``), so an
    unknown slug or a bad value raises here instead of vanishing into a queue.
    """
    return record(slug, status, at)


@app.task(name="heartbeat", acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def heartbeat_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``heartbeat(slug, status="up", at=None)`` for any Celery client. A refusal is logged
    and counted, never retried."""
    names = ("slug", "status", "at")
    if len(args) > len(names) or set(kwargs) - set(names):
        reason = "heartbeat takes slug, and optionally status and at"
        HeartbeatStore(get_redis()).refuse("invalid")
        logger.warning("heartbeat refused: %s", reason)
        return {"refused": reason}
    fields: dict[str, Any] = dict(zip(names, args, strict=False)) | kwargs
    try:
        at = record(fields.get("slug"), fields.get("status", "up"), fields.get("at"))
    except (NotificationConfigError, InvalidHeartbeatError, HeartbeatInFutureError) as exc:
        logger.warning("heartbeat refused: %s", exc)
        return {"refused": str(exc)}
    except (redis.RedisError, OperationalError) as exc:
        logger.warning("redis unavailable while recording a heartbeat; requeueing: %s", exc)
        time.sleep(1.0)
        raise Reject(exc, requeue=True) from None
    return {"slug": fields["slug"], "at": at}


def send_action(action: Action) -> str:
    """Put a checker's page on the normal delivery queue; returns the job id."""
    if action.kind == "trigger":
        if action.request is None:
            raise ValueError("a heartbeat trigger needs its request")
        return accept(parse_request(action.request), new_job_id(), source="heartbeat")
    return lifecycle("resolve", action.dedup_key, action.team)


def run_check() -> CheckReport | None:
    """One heartbeat evaluation over the whole catalogue (None when none is configured)."""
    catalogue = get_catalogue()
    if catalogue is None:
        return None
    checker = HeartbeatChecker(get_redis(), get_settings().heartbeat_check_interval)
    report = checker.run(catalogue, send_action)
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


@app.task(name="heartbeat.check", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def check() -> dict[str, Any]:
    report = run_check()
    if report is None:
        return {"skipped": "HEARTBEAT_SERVICES_FILE is not set"}
    return {"skipped": report.skipped, "changed": report.changed, "sent": len(report.sent)}


@signals.worker_init.connect  # type: ignore[untyped-decorator,unused-ignore]
@signals.beat_init.connect  # type: ignore[untyped-decorator,unused-ignore]
def _validate_catalogue_at_start(**kwargs: Any) -> None:
    # A bad catalogue stops the worker or scheduler at start, naming the service and field.
    # Celery logs and swallows exceptions from signal handlers, so exit explicitly.
    try:
        get_catalogue()
    except NotificationConfigError as exc:
        logger.critical("cannot start: %s", exc)
        sys.stderr.write(f"gds-notification cannot start: {exc}\n")
        raise SystemExit(2) from None
