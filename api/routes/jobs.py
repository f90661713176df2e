"""``GET /v1/jobs/{job_id}``: a job's state per channel and every attempt, as
``gds-notify status --json`` prints it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.auth import require
from api.errors import not_found
from api.routes.answers import ERRORS, Problem
from worker.engine.runtime import engine

router = APIRouter(tags=["jobs"])


@router.get(
    "/v1/jobs/{job_id}",
    responses={**ERRORS, 404: {"model": Problem, "description": "Unknown or expired."}},
    dependencies=[Depends(require("notify"))],
)
def get_job(job_id: str) -> dict[str, Any]:
    """The job's record: its notification, each channel's state, result and last error,
    each email recipient's state, and every attempt with its outcome and latency."""
    record = engine().jobs.get(job_id)
    if record is None:
        raise not_found(f"no job {job_id!r} (unknown, or older than JOB_TTL_SECONDS)")
    return record
