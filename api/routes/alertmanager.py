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

With ``?incident=group`` (the receiver's URL) the group is one incident instead, as
Alertmanager's own PagerDuty receiver makes it: dedup key ``alertmanager-group-`` and a
hash of the group key, triggered while any alert fires, resolved when none does
(:mod:`worker.engine.alert_groups` remembers where its firings went).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from api.auth import require
from api.routes.answers import BODY_ERRORS, accept
from worker.engine import alert_resolution, intake, keys
from worker.engine.alert_groups import as_incident
from worker.engine.runtime import engine
from worker.job_request import BODY_MAX_CHARS, InvalidJobError, parse_request
from worker.notification import (
    NAME_MAX_CHARS,
    RECIPIENT_MAX_CHARS,
    NotificationPriority,
    PagerDutySeverity,
    check_unicode,
    is_one_line,
    one_line,
    truncate,
)

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
    alerts: list[Alert]


class Outcome(BaseModel):
    status: str
    job_ids: list[str] = Field(default_factory=list)
    duplicate: bool = False
    dead_letter: str | None = Field(
        default=None, description="When the alert could not become a notification."
    )
    error: str | None = None


class AlertOutcome(Outcome):
    fingerprint: str


class GroupOutcome(Outcome):
    dedup_key: str
    firing: int = 0


class Received(BaseModel):
    alerts: list[AlertOutcome] = Field(
        default_factory=list, description="One per alert (an incident per alert)."
    )
    group: GroupOutcome | None = Field(
        default=None, description="The group's (an incident per group: ?incident=group)."
    )


#: A fingerprint longer than this (Alertmanager's are 16 hex digits), or not one line as
#: intake reads one, is used by its hash: it names dead letters and the incident. (One
#: this long or shorter is used as it is, as before there was a bound: an incident opened
#: then still resolves.)
FINGERPRINT_MAX_CHARS = 1000


def fingerprint(alert: Alert) -> str:
    """The alert's fingerprint, or a stable hash of its labels when it has none."""
    given = alert.fingerprint
    if given and _intake_takes(given, FINGERPRINT_MAX_CHARS):
        return given
    if given:
        return keys.digest(given, 16)
    canonical = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
    return keys.digest(canonical, 16)


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
    alert_name = _line(labels.get("alertname", ""), NAME_MAX_CHARS)
    if alert_name:
        metadata["class"] = alert_name
    if labels.get("severity", "").lower() in tuple(PagerDutySeverity):
        metadata["severity"] = labels["severity"].lower()
    component = labels.get("instance") or labels.get("job") or ""
    fields: dict[str, Any] = {
        "recipient": _line(component, RECIPIENT_MAX_CHARS)
        or _line(summary(alert), RECIPIENT_MAX_CHARS),
        "subject": summary(alert),
        "body": _fitted(alert.annotations.get("description", "")),
        "priority": priority(alert),
        "alert_name": alert_name or None,
        # The same firing alert (same start) is one job, however often it is repeated.
        "idempotency_id": _bounded_id(f"{dedup_key(alert)}@{alert.starts_at}"),
        "metadata": metadata,
    }
    if labels.get("team"):
        fields["team"] = labels["team"]
    return fields


def _line(text: str, limit: int) -> str:
    """A label (any text, to Prometheus) as a one-line field intake takes: folded, and cut
    to ``limit`` characters. Alertmanager does not read the answer: a field intake refuses
    would be a page never sent. (Not the team: it picks the routing key, so a team intake
    refuses is kept as a dead letter rather than guessed at.)"""
    return truncate(one_line(text), limit)


def _intake_takes(text: str, limit: int) -> bool:
    """Whether intake takes ``text`` as one line of at most ``limit`` characters (what it
    took before labels were bounded, so an incident opened then keeps its key)."""
    try:
        check_unicode(text)
    except ValueError:
        return False
    return len(text) <= limit and is_one_line(text)


def _bounded_id(text: str) -> str:
    """An idempotency id intake takes: ``text``, or its hash (an alert whose start time is
    not the short RFC 3339 text Alertmanager sends)."""
    if _intake_takes(text, NAME_MAX_CHARS):
        return text
    return f"alertmanager-{keys.digest(text, 40)}"


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
        resolves = dedup_key(alert) if alert.status == "resolved" else None
        moment = f"{alert.status}@{alert.starts_at}"
        outcome.dead_letter = _keep(fields, exc, f"{outcome.fingerprint}-", moment, index, resolves)
        outcome.error = str(exc)
    return outcome


#: How many of a group's alerts its page lists (custom details) and its email names.
LISTED_IN_PAGE = 100
LISTED_IN_EMAIL = 1_000


#: The longest line an alert gets in a group's list.
LISTED_LINE_CHARS = 1_024


def _fitted(text: str) -> str:
    """``text`` within the body bound every notification keeps: Alertmanager does not read
    the answer, so an alert refused for a long description would be a page never sent."""
    if len(text) <= BODY_MAX_CHARS:
        return text
    note = f"\n[cut by gds-notification: {len(text)} characters in all]"
    return text[: BODY_MAX_CHARS - len(note)] + note


def group_dedup_key(hook: Webhook) -> str:
    """``alertmanager-group-`` and a hash of the group's key: the same group (its route and
    grouping labels) is the same incident, as Alertmanager's own PagerDuty receiver has it."""
    key = hook.group_key or json.dumps(
        [hook.receiver, hook.group_labels], sort_keys=True, separators=(",", ":")
    )
    return f"alertmanager-group-{keys.digest(key, 16)}"


def group_title(hook: Webhook, alerts: list[Alert]) -> str:
    """The group's one-line title: its common summary, the summary of its one alert, or its
    grouping labels' values."""
    common = one_line(hook.common_annotations.get("summary", ""))
    if common:
        return common
    if len(alerts) == 1:
        return summary(alerts[0])
    named = one_line(" ".join(v for _, v in sorted(hook.group_labels.items())))
    return named or one_line(hook.common_labels.get("alertname", "")) or "Alertmanager group"


def worst(alerts: list[Alert]) -> Alert:
    """The alert whose severity asks the most (the first of them)."""
    return max(alerts, key=lambda a: priority(a).rank)


def group_fields(hook: Webhook, firing: list[Alert]) -> dict[str, Any]:
    """The notification a firing group asks to be: its worst alert's priority, the group's
    common ``team``, and its firing alerts listed (its incident's state may keep another
    team and a higher priority: :mod:`worker.engine.alert_groups`)."""
    key = group_dedup_key(hook)
    head = worst(firing)
    listed = [
        {"labels": a.labels, "annotations": a.annotations, "startsAt": a.starts_at}
        for a in firing[:LISTED_IN_PAGE]
    ]
    details: dict[str, Any] = {
        "firing": listed,
        "num_firing": len(firing),
        "num_resolved": len(hook.alerts) - len(firing),
        "groupLabels": hook.group_labels,
        "commonLabels": hook.common_labels,
        "commonAnnotations": hook.common_annotations,
        "receiver": hook.receiver,
        "groupKey": hook.group_key,
    }
    if len(firing) > LISTED_IN_PAGE:
        details["firing_not_listed"] = len(firing) - LISTED_IN_PAGE
    if hook.truncated_alerts > 0:
        # Firing or resolved, Alertmanager does not say: they were never sent.
        details["truncated_alerts"] = hook.truncated_alerts
    metadata: dict[str, Any] = {
        "dedup_key": key,
        "client": "Alertmanager",
        "custom_details": details,
    }
    if hook.external_url.startswith(("http://", "https://")):
        metadata["client_url"] = hook.external_url
    sources = dict.fromkeys(
        a.generator_url for a in firing if a.generator_url.startswith(("http://", "https://"))
    )
    if sources:
        metadata["links"] = [{"href": url, "text": "Alert source"} for url in list(sources)[:5]]
    alert_name = _line(
        hook.common_labels.get("alertname") or head.labels.get("alertname") or "", NAME_MAX_CHARS
    )
    if alert_name:
        metadata["class"] = alert_name
    if head.labels.get("severity", "").lower() in tuple(PagerDutySeverity):
        metadata["severity"] = head.labels["severity"].lower()
    lines: list[str] = []
    size = 0
    for alert in firing[:LISTED_IN_EMAIL]:
        line = f"- {summary(alert)}"[:LISTED_LINE_CHARS]
        size += len(line) + 1
        if size > BODY_MAX_CHARS // 2:
            break
        lines.append(line)
    if len(firing) > len(lines):
        lines.append(f"- and {len(firing) - len(lines)} more")
    if hook.truncated_alerts > 0:
        lines.append(
            f"- and {hook.truncated_alerts} alerts the receiver's max_alerts left out "
            "(firing or resolved)"
        )
    title = group_title(hook, firing)
    fields: dict[str, Any] = {
        "recipient": _line(
            " ".join(v for _, v in sorted(hook.group_labels.items())), RECIPIENT_MAX_CHARS
        )
        or _line(title, RECIPIENT_MAX_CHARS),
        "subject": f"[FIRING:{len(firing)}] {title}",
        "body": "\n".join(lines),
        "priority": priority(head),
        "alert_name": alert_name or None,
        "metadata": metadata,
    }
    if hook.common_labels.get("team"):
        fields["team"] = hook.common_labels["team"]
    return fields


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _epoch(text: str) -> float | None:
    """An Alertmanager time (RFC 3339, nanoseconds and all) in epoch seconds; None when it
    is not one (and for Go's zero time, which stands for none)."""
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None or moment.year < 1970:
        return None
    return moment.timestamp()


def _latest(times: list[str]) -> float | None:
    epochs = [e for e in map(_epoch, times) if e is not None]
    return max(epochs) if epochs else None


def _digest(moments: list[str]) -> str:
    return keys.digest("\n".join(sorted(moments)), 16)


def _group(hook: Webhook) -> GroupOutcome:
    key = group_dedup_key(hook)
    group_id = key.removeprefix("alertmanager-group-")
    firing = [a for a in hook.alerts if a.status == "firing"]
    if not firing and hook.status == "firing" and hook.truncated_alerts > 0:
        # Every alert listed resolved, yet the group fires: max_alerts cut the firing ones
        # (Alertmanager sorts by labels, not status). It must not resolve.
        return _unlisted_firing(hook, key, group_id)
    outcome = GroupOutcome(
        dedup_key=key, status="firing" if firing else "resolved", firing=len(firing)
    )
    if not hook.alerts:
        return outcome
    if firing:
        moment = _digest([f"{fingerprint(a)}@{a.starts_at}" for a in firing])
        # A dead letter's replay is this one job; the webhook takes its state's id.
        fields = group_fields(hook, firing) | {"idempotency_id": f"{key}@{moment}"}
        try:
            since = _latest([a.starts_at for a in firing])
            _fire(group_id, key, moment, fields, outcome, since)
        except InvalidJobError as exc:
            # Its replay sends it only while the group still fires with these alerts.
            group = {"id": group_id, "state": f"firing:{moment}"}
            outcome.dead_letter = _keep(
                fields, exc, "group-", f"firing@{moment}", None, None, group
            )
            outcome.error = str(exc)
        return outcome
    resolution = _digest([f"{fingerprint(a)}@{a.ends_at}" for a in hook.alerts])
    fields = group_fields(hook, hook.alerts) | {"subject": group_title(hook, hook.alerts)}
    try:
        _resolve(
            group_id, key, resolution, fields, outcome, _latest([a.ends_at for a in hook.alerts])
        )
    except InvalidJobError as exc:
        outcome.dead_letter = _keep(fields, exc, "group-", f"resolved@{resolution}", None, key)
        outcome.error = str(exc)
    return outcome


def _unlisted_firing(hook: Webhook, key: str, group_id: str) -> GroupOutcome:
    """A firing group whose firing alerts max_alerts left out: its open incident stays as
    it is; a group not firing here yet pages as its common labels and annotations."""
    outcome = GroupOutcome(dedup_key=key, status="firing")
    held = engine().alert_groups.current(group_id)
    if held is not None and held.state.startswith("firing:"):
        outcome.duplicate = True
        return outcome
    labels = dict(hook.common_labels)
    if "severity" not in labels and hook.alerts:
        # The cut alerts' severity is unknown; their resolved peers' stands in for it,
        # rather than the default's, which may mail what should page.
        labels["severity"] = worst(hook.alerts).labels.get("severity", "")
    common = Alert(status="firing", labels=labels, annotations=hook.common_annotations)
    moment = _digest([f"unlisted:{hook.group_key}"])
    fields = group_fields(hook, [common])
    details = fields["metadata"]["custom_details"]
    details["firing"], details["num_firing"] = [], None  # none listed: how many, unknown
    details["num_resolved"] = len(hook.alerts)
    fields |= {
        "subject": f"[FIRING] {group_title(hook, [common])}",
        "body": "\n".join(fields["body"].splitlines()[1:]),  # the common alert is no alert
        "idempotency_id": f"{key}@{moment}",
    }
    try:
        _fire(group_id, key, moment, fields, outcome, None)
    except InvalidJobError as exc:
        group = {"id": group_id, "state": f"firing:{moment}"}
        outcome.dead_letter = _keep(fields, exc, "group-", f"firing@{moment}", None, None, group)
        outcome.error = str(exc)
    return outcome


def _fire(
    group_id: str,
    key: str,
    moment: str,
    fields: dict[str, Any],
    outcome: GroupOutcome,
    since: float | None,
) -> None:
    """Trigger (or mail) the group's firing alerts as its incident's team and priority,
    and note where it went."""
    eng = engine()
    asked = parse_request(fields)
    state = eng.alert_groups.fired(group_id, moment, key, asked.team, asked.priority, since)
    answer = accept(as_incident(asked, state), "alertmanager")
    outcome.job_ids, outcome.duplicate = [answer.job_id], answer.duplicate
    eng.alert_groups.went(group_id, eng.jobs, answer.job_id)


def _resolve(
    group_id: str,
    key: str,
    resolution: str,
    fields: dict[str, Any],
    outcome: GroupOutcome,
    ended: float | None,
) -> None:
    """Resolve the incident where it paged and mail each recipient it mailed; for a group
    never seen firing (or forgotten), route the resolved alerts as their firing would."""
    eng = engine()
    state = eng.alert_groups.resolved(group_id, resolution, key, ended)
    if state.stale:
        # A late copy of an earlier resolution, and the group fires anew: nothing to do.
        outcome.status, outcome.duplicate = "stale", True
        return
    once = state.idempotency_id
    if not state.went_somewhere:
        # Routed as its firing would be: by the incident's team and priority where the
        # group's state holds them (seen firing, not known where it went), else its alerts'.
        held = {"team": state.team} if state.team else {}
        if state.priority is not None:
            held["priority"] = state.priority
        request = parse_request(fields | held | {"idempotency_id": once})
        done = alert_resolution.resolve(eng, request, key, "alertmanager", "resolved")
    else:
        done = []
        if state.paged:
            done.append(
                intake.lifecycle_once(
                    eng, "resolve", key, state.team, "alertmanager", f"{once}/resolve"
                )
            )
        resolved = parse_request(
            {k: v for k, v in fields.items() if k != "team"}
            | {
                "subject": f"[RESOLVED] {fields['subject']}",
                "priority": state.priority or fields["priority"],
            }
        )
        for to in state.mailed:
            copy = resolved.model_copy(
                update={"idempotency_id": f"{once}/resolved/{keys.digest(to, 16)}"}
            )
            done.append(intake.resend(eng, copy, to, intake.new_job_id(), "alertmanager"))
    outcome.job_ids = [d.job_id for d in done]
    outcome.duplicate = bool(done) and all(d.duplicate for d in done)


def _keep(
    fields: dict[str, Any],
    exc: InvalidJobError,
    name: str,
    moment: str,
    index: int | None,
    resolves: str | None,
    group: dict[str, str] | None = None,
) -> str:
    """Dead-letter what could not become a notification, with the reason, for a replay
    (which resolves what a resolved alert names, never triggers it): Alertmanager does not
    retry a 4xx. One entry per alert (or group), moment and status, so the repeats every
    repeat_interval do not pile up."""
    intake.refused(engine(), "alertmanager")
    entry_id = f"alertmanager-{name}{keys.digest(moment, 8)}"
    payload: dict[str, Any] = {"args": [fields]}
    if resolves is not None:
        payload["resolves"] = resolves
    if group is not None:
        payload["group"] = group
    where = f"alerts.{index}: " if index is not None else "group: "
    engine().dead_letters.add(
        entry_id=entry_id,
        job_id=None,
        channel="intake",
        reason=f"{where}{exc}",
        payload=payload,
        last_error={"type": "InvalidJobError", "message": str(exc), "errors": exc.errors},
    )
    return entry_id


@router.post(
    "/v1/alertmanager",
    status_code=202,
    response_model=Received,
    responses=BODY_ERRORS,
    dependencies=[Depends(require("notify"))],
)
def receive(
    hook: Webhook,
    incident: Annotated[
        Literal["alert", "group"],
        Query(description="One incident per alert (the default), or one per group."),
    ] = "alert",
) -> Received:
    """Alertmanager's webhook (version 4): each firing alert triggers, each resolved alert
    resolves; repeats of the same firing alert queue nothing new. With ``?incident=group``
    the group is one incident, as Alertmanager's own PagerDuty receiver makes it: it
    triggers while any alert fires (again when the firing alerts change) and resolves when
    none does."""
    if hook.truncated_alerts > 0:
        # Cut by the receiver's max_alerts before they were sent: they never reach us.
        logger.warning(
            "alertmanager: %d alerts of group %r were left out by the receiver's max_alerts "
            "and will not page (set max_alerts: 0)",
            hook.truncated_alerts,
            hook.group_key[:200],
        )
    if incident == "group":
        return Received(group=_group(hook))
    # However many: Alertmanager does not resend a refusal, and each alert is a page. (A
    # wide outage is better one incident per group; the README says so.)
    return Received(alerts=[_one(alert, hook, i) for i, alert in enumerate(hook.alerts)])
