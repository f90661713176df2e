"""What the producer endpoints answer, and the one call they all make into intake."""

from __future__ import annotations

from pydantic import BaseModel, Field

from worker.engine import intake
from worker.engine.runtime import engine
from worker.job_request import JobRequest


class Accepted(BaseModel):
    """The job is in Redis: recorded and queued."""

    job_id: str = Field(description="Follow it at GET /v1/jobs/{job_id}.")
    duplicate: bool = Field(
        default=False,
        description="True when the idempotency id was already accepted: job_id is the first "
        "job's, and nothing new was queued.",
    )
    channels: list[str] = Field(default_factory=list, description="Where it goes.")


class Queued(BaseModel):
    """An acknowledge, resolve or replay is in Redis."""

    job_id: str


class Problem(BaseModel):
    """Any error: what went wrong; for 422, each bad field."""

    error: str
    errors: list[dict[str, str]] | None = None


#: The error answers every authenticated endpoint can give, for the OpenAPI schema.
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": Problem, "description": "No token, or one that is not configured."},
    403: {"model": Problem, "description": "The token lacks the scope."},
    429: {"model": Problem, "description": "The token's request rate; see Retry-After."},
    503: {"model": Problem, "description": "Redis unreachable: nothing stored; Retry-After."},
}
BODY_ERRORS: dict[int | str, dict[str, object]] = {
    **ERRORS,
    408: {"model": Problem, "description": "The body arrived too slowly."},
    413: {"model": Problem, "description": "The body is over API_MAX_BODY_BYTES."},
    422: {"model": Problem, "description": "Bad fields, each named."},
}


def accept(request: JobRequest, source: str) -> Accepted:
    """Intake, exactly as ``tasks.enqueue`` runs it."""
    done = intake.accept(engine(), request, intake.new_job_id(), source)
    return Accepted(
        job_id=done.job_id,
        duplicate=done.duplicate,
        channels=[c.value for c in done.channels],
    )
