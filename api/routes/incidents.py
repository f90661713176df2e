"""``POST /v1/incidents/{dedup_key}/acknowledge`` and ``.../resolve``: through the queue,
like ``gds-notify ack`` and ``resolve``."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import PathConvertor, register_url_convertor

from api.auth import require
from api.routes.answers import BODY_ERRORS, Queued
from worker.engine import intake
from worker.engine.runtime import engine

router = APIRouter(tags=["incidents"])


class _AnyKey(PathConvertor):
    """Starlette's ``path``, line breaks included: a key with one (``a%0Ab``) reaches intake,
    which refuses it naming ``dedup_key``, rather than matching no route (a bare 404)."""

    regex = "(?s:.*)"


register_url_convertor("key", _AnyKey())


class Lifecycle(BaseModel):
    # A misspelt field refused, not dropped: `{"teams": "dba"}` would otherwise resolve
    # with the default key, and the team's incident would stay open.
    model_config = ConfigDict(extra="forbid")

    team: str | None = Field(
        default=None,
        max_length=255,
        description="The team whose routing key opened the incident (default key if none).",
    )


def _queue(action: Literal["acknowledge", "resolve"], dedup_key: str, body: Lifecycle) -> Queued:
    return Queued(job_id=intake.lifecycle(engine(), action, dedup_key, body.team, "api"))


@router.post(
    "/v1/incidents/{dedup_key:key}/acknowledge",  # a key may hold a slash
    status_code=202,
    response_model=Queued,
    responses=BODY_ERRORS,
    dependencies=[Depends(require("notify"))],
)
def acknowledge(dedup_key: str, body: Lifecycle = Body(default_factory=Lifecycle)) -> Queued:  # noqa: B008
    """Acknowledge the open incident with ``dedup_key``."""
    return _queue("acknowledge", dedup_key, body)


@router.post(
    "/v1/incidents/{dedup_key:key}/resolve",
    status_code=202,
    response_model=Queued,
    responses=BODY_ERRORS,
    dependencies=[Depends(require("notify"))],
)
def resolve(dedup_key: str, body: Lifecycle = Body(default_factory=Lifecycle)) -> Queued:  # noqa: B008
    """Resolve the incident with ``dedup_key``; a later trigger opens a new one."""
    return _queue("resolve", dedup_key, body)
