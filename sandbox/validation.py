"""PagerDuty's own validation of Events API v2 bodies, with PagerDuty's own error texts.

Every problem is collected (PagerDuty lists several at once) rather than stopping at the
first. Texts marked "known" in ../shared/reference are PagerDuty's verbatim, misspelling
included; the others follow the same pattern where PagerDuty's text is undocumented.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
ROUTING_KEY_LENGTH = 32
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_EVENT_BYTES = 512_000

_ALNUM = re.compile(r"^[A-Za-z0-9]*$")


def _blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def check_routing_key(event: dict[str, Any]) -> list[str]:
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != ROUTING_KEY_LENGTH:
        errors = ["Length of 'routing_key' is incorrect (should be 32 characters)"]
        if isinstance(key, str) and not _ALNUM.match(key):
            errors.append("'routing_key' cannot contain non-alphanumeric characters.")
        return errors
    if not _ALNUM.match(key):
        return ["'routing_key' cannot contain non-alphanumeric characters."]
    return []


def _check_timestamp(payload: dict[str, Any], errors: list[str]) -> None:
    if "timestamp" not in payload:
        return
    stamp = payload["timestamp"]
    try:
        datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        errors.append("'payload.timestamp' is invalid (must be an ISO 8601 timestamp)")


def _check_links_images(event: dict[str, Any], errors: list[str]) -> None:
    links = event.get("links")
    if links is not None:
        if not isinstance(links, list):
            errors.append("'links' must be an array")
        else:
            for i, link in enumerate(links):
                if not isinstance(link, dict) or _blank(link.get("href")):
                    errors.append(f"'links[{i}].href' is missing or blank")
    images = event.get("images")
    if images is not None:
        if not isinstance(images, list):
            errors.append("'images' must be an array")
        else:
            for i, image in enumerate(images):
                if not isinstance(image, dict) or _blank(image.get("src")):
                    errors.append(f"'images[{i}].src' is missing or blank")
                elif not str(image["src"]).startswith("https://"):
                    errors.append(f"'images[{i}].src' must be an https URL")


def validate_alert_event(event: dict[str, Any], size: int) -> list[str]:
    """Every reason PagerDuty would refuse this alert event; empty when it is valid."""
    errors = check_routing_key(event)
    if size > MAX_EVENT_BYTES:
        errors.append(f"Event object is too large (maximum is {MAX_EVENT_BYTES} bytes)")
    action = event.get("event_action")
    if _blank(action):
        errors.append("'event_action' is missing or blank")
    elif action not in ACTIONS:
        errors.append(
            "'event_action' is invalid (must be one of the following: "
            "'trigger', 'acknowledge' or 'resolve')"
        )
    dedup_key = event.get("dedup_key")
    if dedup_key is not None:
        if not isinstance(dedup_key, str):
            errors.append("'dedup_key' must be a string")
        elif len(dedup_key) > MAX_DEDUP_KEY:
            errors.append("'dedup_key' is too long (maximum is 255 characters)")
    if action in ("acknowledge", "resolve") and _blank(dedup_key):
        errors.append("'dedup_key' is missing or blank")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or blank")
        else:
            summary = payload.get("summary")
            if _blank(summary):
                errors.append("'payload.summary' is missing or blank")
            elif len(str(summary)) > MAX_SUMMARY:
                errors.append("'summary' is too long (maiximum is 1024 characters)")
            if _blank(payload.get("source")):
                errors.append("'payload.source' is missing or blank")
            severity = payload.get("severity")
            if _blank(severity):
                errors.append("'payload.severity' is missing or blank")
            elif severity not in SEVERITIES:
                errors.append(
                    "'payload.severity' is invalid (must be one of the following: "
                    "'critical', 'warning', 'error' or 'info')"
                )
            _check_timestamp(payload, errors)
        _check_links_images(event, errors)
    return errors


def validate_change_event(event: dict[str, Any], size: int) -> list[str]:
    """Every reason PagerDuty would refuse this change event; empty when it is valid."""
    errors = check_routing_key(event)
    if size > MAX_EVENT_BYTES:
        errors.append(f"Event object is too large (maximum is {MAX_EVENT_BYTES} bytes)")
    payload = event.get("payload")
    if not isinstance(payload, dict):
        errors.append("'payload' is missing or blank")
    else:
        summary = payload.get("summary")
        if _blank(summary):
            errors.append("'payload.summary' is missing or blank")
        elif len(str(summary)) > MAX_SUMMARY:
            errors.append("'summary' is too long (maiximum is 1024 characters)")
        _check_timestamp(payload, errors)
    _check_links_images(event, errors)
    return errors
