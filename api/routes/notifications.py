"""``POST /v1/notifications``: the ``notify`` JSON (the same schema as the Celery task and
``tasks.enqueue``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header
from pydantic import ValidationError

from api.auth import require
from api.routes.answers import BODY_ERRORS, Accepted, accept
from worker.job_request import InvalidJobError, JobRequest
from worker.validation import validation_errors

router = APIRouter(tags=["notifications"])


@router.post(
    "/v1/notifications",
    status_code=202,
    response_model=Accepted,
    responses=BODY_ERRORS,
    dependencies=[Depends(require("notify"))],
)
def post_notification(
    notification: JobRequest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=1024,
            description="The job's idempotency id, if the body names none.",
        ),
    ] = None,
) -> Accepted:
    """Queue a notification: a page for CRITICAL and EMERGENCY, else an email, unless the
    routing rules or ``channel`` say otherwise. Answered 202 once it is in Redis; a copy of
    an idempotency id accepted within ``IDEMPOTENCY_TTL_SECONDS`` answers with the first
    job's id and ``duplicate: true``, and queues nothing."""
    if idempotency_key is not None:
        idempotency_key = _utf8(idempotency_key)
        if notification.idempotency_id not in (None, idempotency_key):
            raise InvalidJobError(
                [
                    {
                        "field": "Idempotency-Key",
                        "message": "differs from the body's idempotency_id; send one of them",
                    }
                ]
            )
        # Checked as the body's own idempotency_id is (one line, not blank).
        try:
            notification = JobRequest.model_validate(
                {**notification.model_dump(), "idempotency_id": idempotency_key}
            )
        except ValidationError as exc:
            problems = [e["message"] for e in validation_errors(exc)]
            raise InvalidJobError(
                [{"field": "Idempotency-Key", "message": "; ".join(problems)}]
            ) from None
    return accept(notification, "api")


def _utf8(value: str) -> str:
    """A header as the client wrote it. HTTP hands header bytes over as Latin-1, so a UTF-8
    ``café`` arrived as ``cafÃ©``, and never matched the same id sent in a body."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # Latin-1 after all (or a line break): read, and checked, as such
        return value
