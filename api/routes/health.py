"""Health probes, open to anyone (no token): ``/healthz`` (the process answers),
``/readyz`` (it can do its work) and the GDS design's ``/health``."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.redis_deadline import SingleFlight
from config.queues import INTAKE_QUEUE, PAGERDUTY_QUEUE, QUEUE_ORDER
from worker.engine import keys, stats
from worker.engine.heartbeats.checker import last_check
from worker.engine.runtime import Engine, engine
from worker.engine.workers import Workers

router = APIRouter(tags=["health"])

#: The queues pages go through (intake too: `notify` from any producer lands there).
PAGE_QUEUES = (PAGERDUTY_QUEUE, INTAKE_QUEUE)

#: A worker that has not said it is up for this long is not counted.
WORKER_SEEN_WITHIN = 60.0

#: The probe's Redis reads, one set in flight at a time, all within one budget
#: (api/redis_deadline.py): a Redis answering each read slowly is as down as a hung one.
READS: SingleFlight[tuple[dict[str, Any], list[str]]] = SingleFlight("readyz-redis")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/health")
def health() -> dict[str, str]:
    """The GDS design's health check."""
    return {"status": "ok"}


def checker_fresh_within(interval: float) -> float:
    """How old the last heartbeat check may be before readiness fails."""
    return max(60.0, 3 * interval)


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: ``failing`` names each part."}},
)
def readyz() -> JSONResponse:
    """Ready: Redis answers and takes a write, pages and intake have a worker that
    reported within the last minute, and (with heartbeat monitoring on: a services file,
    or a service registered through the API) the heartbeat check ran recently. 503 names
    each part that fails: ``redis`` (unreachable, or refusing writes), ``workers`` when
    none reported, else ``workers:QUEUE`` for the page or intake queue nobody consumes,
    ``heartbeat_check``. ``checks.queues`` shows email's workers too."""
    eng = engine()
    try:
        checks, failing = READS.run(lambda: _readiness(eng))
    except redis.RedisError as exc:
        checks, failing = {"redis": f"unreachable: {type(exc).__name__}"}, ["redis"]
    status = 503 if failing else 200
    body = {"status": "not ready" if failing else "ready", "failing": failing, "checks": checks}
    return JSONResponse(body, status_code=status)


def _readiness(eng: Engine) -> tuple[dict[str, Any], list[str]]:
    """The checks and the parts failing, read on the client that never waits out a
    failover (a hung Redis must be a quick 503, not a retry)."""
    client = eng.quick_redis
    checks: dict[str, Any] = {}
    failing: list[str] = []
    client.ping()
    refused = stats.refuses_writes(
        client, eng.settings.redis_min_replicas, eng.settings.redis_wait_timeout
    )
    if refused:
        return {"redis": f"not writable: {refused}"}, ["redis"]
    checks["redis"] = "ok"
    reports = Workers(client)
    workers = reports.seen(WORKER_SEEN_WITHIN)
    checks["workers"] = [w.hostname for w in workers]
    # By queue: the email pool alive says nothing of the page pool, and pages are the point.
    # Email's own pool is shown, not failed on: it runs at idle CPU priority and may miss
    # its reports through a page storm, and its absence is a ticket (NoEmailWorkers).
    checks["queues"] = {q: [w.hostname for w in workers if q in w.queues] for q in QUEUE_ORDER}
    if not workers:
        failing.append("workers")
    else:
        failing.extend(f"workers:{q}" for q in PAGE_QUEUES if not checks["queues"][q])
    monitoring = eng.settings.heartbeat_services_file is not None
    if monitoring or client.exists(keys.HEARTBEAT_SERVICES):  # or one registered
        checked = last_check(client)
        age = None if checked is None else reports.now() - checked
        checks["heartbeat_check_age_seconds"] = None if age is None else round(age, 1)
        if age is None or age > checker_fresh_within(eng.settings.heartbeat_check_interval):
            failing.append("heartbeat_check")
    return checks, failing
