"""``POST /v1/alertmanager``: Prometheus Alertmanager's webhook receiver (payload version 4).

Point a ``webhook_configs`` entry at it (``send_resolved: true``, a bearer token with the
``notify`` scope). Each firing alert triggers, routed by the routing rules on its
``severity`` label (and ``team`` label); each resolved alert resolves. The dedup key is
``alertmanager-`` and the alert's fingerprint (a stable hash of its labels when there is
none), so the incident follows the alert however its group is split.

Alertmanager sends a firing alert again every ``repeat_interval`` and retries on 5xx and
429: the same firing alert (same fingerprint and start) is one job, so a repeat opens no
incident and sends no second email. It does not retry a 4xx, so an alert that cannot be
turned into a notification is dead-lettered with the reason (nothing is lost; its replay
triggers, or for a resolved alert resolves) and the rest of the group is still accepted;
only a payload that is not a version 4 webhook is refused (422).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from api.auth import require
from api.routes.answers import BODY_ERRORS, accept
from worker.engine import alert_resolution, intake
from worker.engine.runtime import engine
from worker.job_request import InvalidJobError, parse_request
from worker.notification import NotificationPriority, PagerDutySeverity, one_line

logger = logging.getLogger(__name__)

router = APIRouter(tags=["alertmanager"])

#: The ``severity`` label, as people write it, to a priority (and so to a channel).
PRIORITY_BY_SEVERITY = {
    "emergency": NotificationPriority.EMERGENCY,
    "critical": NotificationPriority.CRITICAL,
    "page": NotificationPriority.CRITICAL,
    "p1": NotificationPriority.CRITICAL,
    "error": NotificationPriority.HIGH,
    "high": NotificationPriority.HIGH,
    "major": NotificationPriority.HIGH,
    "p2": NotificationPriority.HIGH,
    "warning": NotificationPriority.NORMAL,
    "warn": NotificationPriority.NORMAL,
    "minor": NotificationPriority.NORMAL,
    "p3": NotificationPriority.NORMAL,
    "info": NotificationPriority.LOW,
    "low": NotificationPriority.LOW,
    "none": NotificationPriority.LOW,
    "p4": NotificationPriority.LOW,
    "p5": NotificationPriority.LOW,
}


class _Camel(BaseModel):
    # Alertmanager writes camelCase; fields it adds in later versions are ignored.
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


class Alert(_Camel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: str = ""
    ends_at: str = ""
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = ""


class Webhook(_Camel):
    """What Alertmanager POSTs to a webhook receiver."""

    version: Literal["4"]
    group_key: str = ""
    truncated_alerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict)
    common_labels: dict[str, str] = Field(default_factory=dict)
    common_annotations: dict[str, str] = Field(default_factory=dict)
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[Alert] = Field(max_length=10_000)


class AlertOutcome(BaseModel):
    fingerprint: str
    status: str
    job_ids: list[str] = Field(default_factory=list)
    duplicate: bool = False
    dead_letter: str | None = Field(
        default=None, description="When the alert could not become a notification."
    )
    error: str | None = None


class Received(BaseModel):
    alerts: list[AlertOutcome]


def fingerprint(alert: Alert) -> str:
    """The alert's fingerprint, or a stable hash of its labels when it has none."""
    if alert.fingerprint:
        return alert.fingerprint
    canonical = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def dedup_key(alert: Alert) -> str:
    return f"alertmanager-{fingerprint(alert)}"


def priority(alert: Alert) -> NotificationPriority:
    severity = alert.labels.get("severity", "").strip().lower()
    return PRIORITY_BY_SEVERITY.get(severity, NotificationPriority.NORMAL)


def summary(alert: Alert) -> str:
    """The alert's one-line summary. Rules often write it as a YAML block (``summary: |``),
    which ends in a newline: a line break in a page's summary is folded, not refused, since
    Alertmanager does not read the answer and the page would never go out."""
    written = one_line(alert.annotations.get("summary", ""))
    if written:
        return written
    name = alert.labels.get("alertname", "alert from Alertmanager")
    instance = alert.labels.get("instance")
    return one_line(f"{name} on {instance}" if instance else name)


def request_fields(alert: Alert, hook: Webhook) -> dict[str, Any]:
    """The notification a firing alert becomes, as the fields intake validates."""
    labels = alert.labels
    metadata: dict[str, Any] = {
        "dedup_key": dedup_key(alert),
        "client": "Alertmanager",
        "custom_details": {
            "labels": labels,
            "annotations": alert.annotations,
            "startsAt": alert.starts_at,
            "receiver": hook.receiver,
            "groupKey": hook.group_key,
        },
    }
    if hook.external_url.startswith(("http://", "https://")):
        metadata["client_url"] = hook.external_url
    if alert.generator_url.startswith(("http://", "https://")):
        metadata["links"] = [{"href": alert.generator_url, "text": "Alert source"}]
    if "alertname" in labels:
        metadata["class"] = labels["alertname"]
    if labels.get("severity", "").lower() in tuple(PagerDutySeverity):
        metadata["severity"] = labels["severity"].lower()
    fields: dict[str, Any] = {
        "recipient": one_line(labels.get("instance") or labels.get("job") or "") or summary(alert),
        "subject": summary(alert),
        "body": alert.annotations.get("description", ""),
        "priority": priority(alert),
        "alert_name": labels.get("alertname"),
        # The same firing alert (same start) is one job, however often it is repeated.
        "idempotency_id": f"{dedup_key(alert)}@{alert.starts_at}",
        "metadata": metadata,
    }
    if labels.get("team"):
        fields["team"] = labels["team"]
    return fields


def _one(alert: Alert, hook: Webhook, index: int) -> AlertOutcome:
    outcome = AlertOutcome(fingerprint=fingerprint(alert), status=alert.status)
    fields = request_fields(alert, hook)
    try:
        request = parse_request(fields)
        if alert.status == "firing":
            answer = accept(request, "alertmanager")
            outcome.job_ids, outcome.duplicate = [answer.job_id], answer.duplicate
        else:
            done = alert_resolution.resolve(
                engine(), request, dedup_key(alert), "alertmanager", alert.ends_at or None
            )
            outcome.job_ids = [d.job_id for d in done]
            outcome.duplicate = bool(done) and all(d.duplicate for d in done)
    except InvalidJobError as exc:
        # Alertmanager does not retry a 4xx: keep it, with the reason, for a replay (which
        # resolves what a resolved alert names, never triggers it). One entry per alert,
        # start and status, so its repeats every repeat_interval do not pile up.
        intake.refused(engine(), "alertmanager")
        moment = hashlib.sha256(f"{alert.status}@{alert.starts_at}".encode()).hexdigest()
        entry_id = f"alertmanager-{outcome.fingerprint}-{moment[:8]}"
        payload: dict[str, Any] = {"args": [fields]}
        if alert.status == "resolved":
            payload["resolves"] = dedup_key(alert)
        engine().dead_letters.add(
            entry_id=entry_id,
            job_id=None,
            channel="intake",
            reason=f"alerts.{index}: {exc}",
            payload=payload,
            last_error={"type": "InvalidJobError", "message": str(exc), "errors": exc.errors},
        )
        outcome.dead_letter, outcome.error = entry_id, str(exc)
    return outcome


@router.post(
    "/v1/alertmanager",
    status_code=202,
    response_model=Received,
    responses=BODY_ERRORS,
    dependencies=[Depends(require("notify"))],
)
def receive(hook: Webhook) -> Received:
    """Alertmanager's webhook (version 4): each firing alert triggers, each resolved alert
    resolves; repeats of the same firing alert queue nothing new."""
    if hook.truncated_alerts > 0:
        # Cut by the receiver's max_alerts before they were sent: they never reach us.
        logger.warning(
            "alertmanager: %d alerts of group %r were left out by the receiver's max_alerts "
            "and will not page (set max_alerts: 0)",
            hook.truncated_alerts,
            hook.group_key[:200],
        )
    return Received(alerts=[_one(alert, hook, i) for i, alert in enumerate(hook.alerts)])
