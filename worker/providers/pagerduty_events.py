"""Building PagerDuty Events API v2 bodies from notifications: pure functions, no I/O.

PagerDuty rejects an event whose summary is over 1024 characters, whose dedup_key is over
255, or whose body is over 512 KB, and a rejected page is a page nobody gets. So the limits
are enforced here, before sending, the way Alertmanager does it: the summary is cut and
ends in "…", custom_details are shed (with a note saying so) from an oversized event, and an
over-long dedup_key is replaced by a stable hash of itself.
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from worker.exceptions import NotificationDeliveryError
from worker.notification import (
    EVENT_IMAGES,
    EVENT_LINKS,
    Notification,
    NotificationPriority,
    PagerDutySeverity,
    content_key,
)
from worker.validation import described

MAX_SUMMARY_CHARS = 1024
MAX_DEDUP_KEY_CHARS = 255
MAX_EVENT_BYTES = 512_000
#: Fields other than the summary that can carry user text; capped so shedding always works.
MAX_FIELD_CHARS = 1024
#: The longest ``client_url`` sent (as browsers and proxies commonly take).
MAX_URL_CHARS = 8192

#: Metadata keys that are PagerDuty event fields rather than custom details.
EVENT_METADATA_KEYS = frozenset(
    {
        "group",
        "team",
        "links",
        "images",
        "client",
        "client_url",
        "source",
        "component",
        "class",
        "severity",
        "dedup_key",
        "custom_details",
    }
)


class EventAction(enum.StrEnum):
    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


SEVERITY_BY_PRIORITY: dict[NotificationPriority, PagerDutySeverity] = {
    NotificationPriority.LOW: PagerDutySeverity.INFO,
    NotificationPriority.NORMAL: PagerDutySeverity.WARNING,
    NotificationPriority.HIGH: PagerDutySeverity.ERROR,
    NotificationPriority.CRITICAL: PagerDutySeverity.CRITICAL,
    NotificationPriority.EMERGENCY: PagerDutySeverity.CRITICAL,
}


def encode_event(event: dict[str, Any]) -> bytes:
    """The exact bytes sent; the size limit is measured on these."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def fit_dedup_key(key: str) -> str:
    """``key`` itself, or a stable ``sha256:…`` stand-in when it is over PagerDuty's limit."""
    if len(key) <= MAX_DEDUP_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def event_dedup_key(notification: Notification) -> str:
    """The dedup_key a trigger for ``notification`` carries: ``metadata["dedup_key"]`` when
    it names one (fitted to PagerDuty's limit), else :func:`dedup_key_for`."""
    named = notification.metadata.get("dedup_key")
    return fit_dedup_key(named) if isinstance(named, str) else dedup_key_for(notification)


def dedup_key_for(notification: Notification) -> str:
    """The notification's idempotency id, else a key derived from its whole content.

    The derived key depends only on the notification, so every retry of the same job sends
    the same key and PagerDuty appends to the open incident instead of opening another.
    """
    if notification.idempotency_id:
        return fit_dedup_key(notification.idempotency_id)
    return content_key(notification)


def severity_for(
    notification: Notification, default: PagerDutySeverity = PagerDutySeverity.ERROR
) -> PagerDutySeverity:
    return SEVERITY_BY_PRIORITY.get(notification.priority, default)


def _invalid(field: str, exc: ValidationError) -> NotificationDeliveryError:
    problems = described(field, exc)
    return NotificationDeliveryError(
        f"notification cannot become a PagerDuty event: {problems}",
        errors=[problems],
        retryable=False,
        provider="pagerduty",
    )


def build_trigger(
    notification: Notification,
    *,
    routing_key: str,
    source: str,
    default_severity: PagerDutySeverity = PagerDutySeverity.ERROR,
    now: datetime | None = None,
    replay_of: str | None = None,
) -> dict[str, Any]:
    """The trigger event for ``notification``, within every PagerDuty limit; ``now`` is
    its timestamp, and ``replay_of`` (what this replays, as its job record names it) is added
    to its details.

    Raises :class:`NotificationDeliveryError` (not retryable) when ``metadata.links`` or
    ``metadata.images`` are malformed: PagerDuty would reject the whole page for them.
    """
    meta = notification.metadata
    details: dict[str, Any]
    if isinstance(meta.get("custom_details"), dict):
        details = dict(meta["custom_details"])  # type: ignore[arg-type]
    else:
        details = {k: v for k, v in meta.items() if k not in EVENT_METADATA_KEYS}
        details.update(
            body=notification.body,
            alert_name=notification.alert_name,
            db_instance_id=notification.db_instance_id,
            priority=notification.priority.value,
        )
    if replay_of:
        # The responder sees a late page for what it is, and where to read its history.
        details["replay_of"] = replay_of
    severity = meta.get("severity") or severity_for(notification, default_severity).value
    payload: dict[str, Any] = {
        "summary": cut(notification.subject, MAX_SUMMARY_CHARS),
        "severity": severity,
        "source": cut(_text(meta, "source", source), MAX_FIELD_CHARS),
        "component": cut(_text(meta, "component", notification.recipient), MAX_FIELD_CHARS),
        "timestamp": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds"),
        "custom_details": details,
    }
    group = meta.get("group") or meta.get("team")
    if isinstance(group, str) and group:
        payload["group"] = cut(group, MAX_FIELD_CHARS)
    event_class = _text(meta, "class", notification.alert_name or "")
    if event_class:
        payload["class"] = cut(event_class, MAX_FIELD_CHARS)

    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": EventAction.TRIGGER.value,
        "dedup_key": event_dedup_key(notification),
        "payload": payload,
    }
    # Intake refuses a page whose links or images PagerDuty would not take; one queued
    # before it did (or built here directly) is refused now, before anything is sent.
    if "links" in meta:
        try:
            links = EVENT_LINKS.validate_python(meta["links"])
        except ValidationError as exc:
            raise _invalid("metadata.links", exc) from None
        event["links"] = [link.model_dump(exclude_none=True) for link in links]
    if "images" in meta:
        try:
            images = EVENT_IMAGES.validate_python(meta["images"])
        except ValidationError as exc:
            raise _invalid("metadata.images", exc) from None
        event["images"] = [image.model_dump(exclude_none=True) for image in images]
    client, client_url = meta.get("client"), meta.get("client_url")
    if isinstance(client, str):
        event["client"] = cut(client, MAX_FIELD_CHARS)
    # A URL cut short would lead nowhere: one too long to keep is left out.
    if isinstance(client_url, str) and len(client_url) <= MAX_URL_CHARS:
        event["client_url"] = client_url
    return fit_event_size(event)


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters as PagerDuty may count them, ending in "…" when
    cut. Its limits are documented in characters, not which: counted in UTF-16 units (as
    a JVM or JavaScript counts), an emoji is two, and a summary Python counts as 1,024 can
    be 2,047. Cut in UTF-16 units, it fits either count."""
    if 2 * len(text) <= limit:  # fits however it is counted: the usual case, at once
        return text
    units = len(text.encode("utf-16-le")) // 2
    if units <= limit:
        return text
    kept, count = [], 0
    for ch in text:
        count += 2 if ord(ch) > 0xFFFF else 1
        if count > limit - 1:
            break
        kept.append(ch)
    return "".join(kept) + "…"


def _text(meta: dict[str, Any], key: str, default: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) and value else default


def fit_event_size(event: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """``event`` unchanged when it fits in ``limit`` bytes; else with custom_details (and, if
    still needed, links and images) replaced by a note that says what was dropped and why."""
    size = len(encode_event(event))
    if size <= limit:
        return event
    shed = dict(event)
    payload = dict(shed["payload"])
    note = (
        f"custom_details removed by gds-notification: the event was {size} bytes, "
        f"over PagerDuty's {limit}-byte limit"
    )
    payload["custom_details"] = {"note": note}
    shed["payload"] = payload
    if len(encode_event(shed)) > limit:
        shed.pop("links", None)
        shed.pop("images", None)
        payload["custom_details"] = {"note": note + "; links and images removed too"}
    return shed


def build_lifecycle(action: EventAction, *, routing_key: str, dedup_key: str) -> dict[str, Any]:
    """An acknowledge or resolve event: PagerDuty needs only the key and the dedup_key."""
    return {
        "routing_key": routing_key,
        "event_action": action.value,
        "dedup_key": fit_dedup_key(dedup_key),
    }


def build_change(
    *,
    routing_key: str,
    summary: str,
    source: str | None = None,
    timestamp: datetime | None = None,
    custom_details: dict[str, Any] | None = None,
    links: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A change event (a deploy, a config change): shown on the service, opens no incident."""
    payload: dict[str, Any] = {
        "summary": cut(summary, MAX_SUMMARY_CHARS),
        "timestamp": (timestamp or datetime.now(UTC)).astimezone(UTC).isoformat(),
    }
    if source:
        payload["source"] = source
    if custom_details:
        payload["custom_details"] = custom_details
    event: dict[str, Any] = {"routing_key": routing_key, "payload": payload}
    if links:
        try:
            event["links"] = [
                link.model_dump(exclude_none=True) for link in EVENT_LINKS.validate_python(links)
            ]
        except ValidationError as exc:
            raise _invalid("links", exc) from None
    return fit_event_size(event)
