"""The intake payload: what producers send to ``notify`` (any language), ``enqueue`` or the
HTTP API, validated once, with every bad field named."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, ValidationError, field_validator

from worker.channels import Channel
from worker.exceptions import InvalidJobError
from worker.notification import Notification, check_unicode, is_one_line
from worker.validation import validation_errors

__all__ = [
    "InvalidJobError",
    "JobRequest",
    "json_schema",
    "json_schema_text",
    "parse_request",
    "validation_errors",
]


TEAM_MAX_LENGTH = 255

#: The longest body (and HTML body) a notification may have, at every door: what the HTTP
#: API takes in a whole request (API_MAX_BODY_BYTES' default), and far past any alert.
BODY_MAX_CHARS = 1_048_576


class JobRequest(Notification):
    """A Notification plus routing fields. ``team`` picks the PagerDuty routing key (and can
    match routing rules); ``channel`` forces one channel instead of the routing rules."""

    # Bounded here, at the doors, not in Notification: a job stored before the bound still
    # delivers. The bound is shown in the schema; the check is _bounded's, which says more.
    body: str = Field(
        default="",
        description="Plain-text body / incident details.",
        json_schema_extra={"maxLength": BODY_MAX_CHARS},
    )
    body_html: str | None = Field(
        default=None,
        description="Optional HTML alternative.",
        json_schema_extra={"maxLength": BODY_MAX_CHARS},
    )
    team: str | None = Field(default=None, max_length=TEAM_MAX_LENGTH)
    channel: Channel | None = None

    @field_validator("body", "body_html")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        # Every copy of a job is kept in Redis (its record, its delivery message): a
        # producer's stray log file must not fill it.
        if value is not None and len(value) > BODY_MAX_CHARS:
            raise ValueError(
                f"must be at most {BODY_MAX_CHARS} characters (it has {len(value)}): "
                "send a link to the rest"
            )
        return value

    @field_validator("team")
    @classmethod
    def _team_one_line(cls, value: str | None) -> str | None:
        return None if value is None else check_team(value)

    def notification(self) -> Notification:
        """The notification part, without validating it a second time (it was, as part of
        this request)."""
        fields = {name: getattr(self, name) for name in Notification.model_fields}
        return Notification.model_construct(
            _fields_set=self.model_fields_set & fields.keys(), **fields
        )


def check_team(value: str) -> str:
    """A team name as every door takes one (it picks a routing key, and is logged): one
    non-blank line of valid Unicode; ValueError says what is wrong."""
    check_unicode(value)
    if not value.strip() or not is_one_line(value):
        raise ValueError("must be a non-blank single line")
    if len(value) > TEAM_MAX_LENGTH:
        raise ValueError(f"must be at most {TEAM_MAX_LENGTH} characters")
    return value


def parse_request(payload: Any, **routing: Any) -> JobRequest:
    """A JobRequest from any value, or InvalidJobError naming what is wrong. ``routing``
    (``team``, ``channel``) given here wins over the same fields in ``payload``."""
    if isinstance(payload, JobRequest) and not routing:
        return payload
    if isinstance(payload, Notification):
        payload = payload.model_dump()
    if isinstance(payload, dict) and routing:
        payload = payload | routing
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise InvalidJobError(
            [{"field": "payload", "message": f"must be a JSON object, not {kind}"}]
        )
    try:
        return JobRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidJobError(validation_errors(exc)) from None


def json_schema() -> dict[str, Any]:
    schema = JobRequest.model_json_schema()
    schema["title"] = "GDS notification job (Celery task 'notify', one argument)"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2)
