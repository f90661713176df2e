"""Dead letters, for ``admin`` tokens: list, show and replay (as ``gds-notify dlq``)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator

from api.auth import require
from api.errors import conflict, not_found
from api.routes.answers import ERRORS, Problem, Queued
from config.moments import parse_since
from worker.engine import keys
from worker.engine.keys import DeadLetterChannel
from worker.engine.replay import ReplayInProgressError, replay
from worker.engine.runtime import engine

router = APIRouter(tags=["dead letters"], dependencies=[Depends(require("admin"))])

NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No such dead letter."}
}


# A dead letter keeps what a producer sent, nested as deep as JSON allowed it; pydantic's
# serializer stops at a depth the standard library's does not, so the letters are
# answered as the store wrote them.


def _since(value: str | None) -> float | None:
    return None if value is None else parse_since(value)


@router.get("/v1/dead-letters", responses=ERRORS, response_model=dict[str, Any])
def list_dead_letters(
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    channel: DeadLetterChannel | None = None,
    since: Annotated[
        float | None,
        BeforeValidator(_since),
        Query(
            description="Only those dead since: a duration ago ('2h') or an ISO 8601 time "
            "(UTC when it names no zone).",
            json_schema_extra={"type": "string", "examples": ["2h"]},
        ),
    ] = None,
    reason: Annotated[
        str | None,
        Query(min_length=1, description="Only those whose reason holds this text, any case."),
    ] = None,
) -> JSONResponse:
    """The newest dead letters first, each with its reason, attempts and last error;
    ``channel``, ``since`` and ``reason`` choose (``total`` counts those chosen)."""
    letters = engine().dead_letters
    if reason is None:
        found, total = letters.list(limit, channel, since), letters.count(channel, since)
    else:
        found, total = letters.matching(reason, limit, channel, since)
    return JSONResponse({"dead_letters": found, "total": total})


@router.get(
    "/v1/dead-letters/{entry_id}",
    responses={**ERRORS, **NOT_FOUND},
    response_model=dict[str, Any],
)
def show_dead_letter(entry_id: str) -> JSONResponse:
    """Everything kept about one dead letter."""
    entry = engine().dead_letters.get(entry_id)
    if entry is None:
        raise not_found(f"no dead letter {entry_id!r}")
    return JSONResponse(entry)


@router.post(
    "/v1/dead-letters/{entry_id}/replay",
    status_code=202,
    response_model=Queued,
    responses={
        **ERRORS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "Another replay of it is under way."},
        422: {"model": Problem, "description": "Still invalid."},
    },
)
def replay_dead_letter(entry_id: str) -> Queued:
    """Send the job through intake again, as a new job; the dead letter goes once it is
    queued. A job that is still invalid answers 422 and stays; one another replay holds
    at this moment, 409 (ask again: it is gone once that replay is done)."""
    try:
        return Queued(job_id=replay(engine(), entry_id))
    except ReplayInProgressError as exc:
        # Until that replay is done: at most the hold's time, should its replayer have died.
        held = engine().redis.pttl(keys.dead_letter_replay(entry_id))
        raise conflict(str(exc), retry_after=max(1, min(5, math.ceil(held / 1000)))) from None
    except KeyError:
        raise not_found(f"no dead letter {entry_id!r}") from None
