"""``POST /ingest``: the GDS design's intake, so its producers work unchanged.

The body names an alert, not a recipient: ``alert_name`` and ``db_instance_id`` are looked
up in the routing rules (the design's recipient lookup), whose ``email_to`` names the
people it goes to; each recipient's state is in the job (``GET /v1/jobs/{job_id}``). The
idempotency id is ``message_id``, else the hex SHA-256 of ``alert_name + subject +
body_text``, as the design computes it: the same body twice is one job.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require
from api.routes.answers import BODY_ERRORS, accept
from config.routing import route
from worker.channels import Channel
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError, parse_request
from worker.notification import NotificationPriority

router = APIRouter(tags=["GDS ingest"])

#: The notification's fields, by the names the body gave them.
AS_SENT = {"idempotency_id": "message_id", "body": "body_text"}


class IngestBody(BaseModel):
    """The GDS design's alert."""

    model_config = ConfigDict(extra="ignore")

    message_id: str | None = Field(default=None, max_length=1024)
    alert_name: str = Field(min_length=1, max_length=1024)
    db_instance_id: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    subject: str = Field(default="", description="The email's subject; the alert's name if none.")
    body_text: str = ""
    body_html: str | None = None

    def idempotency_id(self) -> str:
        if self.message_id:
            return self.message_id
        seed = self.alert_name + self.subject + self.body_text
        return hashlib.sha256(seed.encode("utf-8")).hexdigest()


class IngestAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    job_id: str
    idempotency_id: str
    duplicate: bool = False


@router.post(
    "/ingest",
    status_code=202,
    response_model=IngestAccepted,
    responses=BODY_ERRORS,
    dependencies=[Depends(require("notify"))],
)
def ingest(body: IngestBody) -> IngestAccepted:
    """Accept a GDS alert; its recipients come from the routing rules that match its
    ``alert_name`` and ``db_instance_id``."""
    priority = NotificationPriority.NORMAL
    rule = route(
        engine().settings.routing_rules, priority, None, body.alert_name, body.db_instance_id
    )
    if Channel.EMAIL in rule.channels and not rule.email_to:
        raise InvalidJobError(
            [
                {
                    "field": "alert_name",
                    "message": f"no routing rule names recipients (email_to) for alert "
                    f"{body.alert_name!r} on db_instance_id {body.db_instance_id}",
                }
            ]
        )
    idempotency_id = body.idempotency_id()
    subject_given = bool(body.subject.strip())
    try:
        request = parse_request(
            {
                "recipient": rule.email_to or body.alert_name,
                "subject": body.subject if subject_given else body.alert_name,
                "body": body.body_text,
                "body_html": body.body_html,
                "priority": priority,
                "alert_name": body.alert_name,
                "db_instance_id": body.db_instance_id,
                "idempotency_id": idempotency_id,
            }
        )
    except InvalidJobError as exc:
        # Named as this body names them, not as the notification they became; a subject
        # taken from alert_name is that field's problem, told once.
        named = [{**e, "field": AS_SENT.get(e["field"], e["field"])} for e in exc.errors]
        if not subject_given:
            named = [e for e in named if e["field"] != "subject"] or named
        raise InvalidJobError(named) from None
    answer = accept(request, "ingest")
    return IngestAccepted(
        job_id=answer.job_id, idempotency_id=idempotency_id, duplicate=answer.duplicate
    )
