"""``GET /v1/jobs/{job_id}``: a job's state per channel and every attempt, as
``gds-notify status --json`` prints it; ``GET /v1/jobs``: the most recent ones."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from api.auth import require
from api.errors import not_found
from api.routes.answers import ERRORS, Problem
from worker.engine.dead_letters import no_job
from worker.engine.runtime import engine

router = APIRouter(tags=["jobs"])


@router.get(
    "/v1/jobs/{job_id}",
    responses={**ERRORS, 404: {"model": Problem, "description": "Unknown or expired."}},
    dependencies=[Depends(require("notify"))],
)
def get_job(job_id: str) -> dict[str, Any]:
    """The job's record: its notification, each channel's state, result and last error,
    each email recipient's state, and every attempt with its outcome and latency. For a
    copy dropped at intake (same idempotency id), the job it copied, with ``duplicate``
    set to the id asked for."""
    record = engine().jobs.lookup(job_id)
    if record is None:
        # Dead letters are for admin tokens: their reasons quote what producers sent.
        shown_by = f"GET /v1/dead-letters/{job_id} (admin)"
        raise not_found(no_job(engine().dead_letters, job_id, shown_by))
    return record


@router.get("/v1/jobs", responses=ERRORS, dependencies=[Depends(require("notify"))])
def list_jobs(
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: Literal["pending", "delivered", "dead-lettered", "partly dead"] | None = None,
) -> dict[str, Any]:
    """The most recent jobs, newest first (as ``gds-notify jobs --json``), without their
    attempts; ``status`` keeps only jobs in that state."""
    return {"jobs": engine().jobs.recent(limit, status)}
