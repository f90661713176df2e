"""Event building and header parsing: the pure functions behind the provider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from worker.notification import truncate
from worker.providers.base import Notification
from worker.providers.pagerduty import change_url_for, parse_retry_after
from worker.providers.pagerduty_events import (
    MAX_EVENT_BYTES,
    EventAction,
    build_change,
    build_lifecycle,
    build_trigger,
    dedup_key_for,
    encode_event,
    fit_event_size,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def note(**fields: object) -> Notification:
    return Notification.model_validate({"recipient": "svc", "subject": "s", **fields})


def test_derived_dedup_key_is_stable_and_content_sensitive() -> None:
    assert dedup_key_for(note()) == dedup_key_for(note())
    assert dedup_key_for(note()) != dedup_key_for(note(body="other"))
    assert dedup_key_for(note(idempotency_id="abc")) == "abc"
    assert len(dedup_key_for(note(idempotency_id="x" * 300))) <= 255


def test_truncate_ends_in_ellipsis_only_when_cut() -> None:
    assert truncate("abc", 3) == "abc"
    assert truncate("abcd", 3) == "ab…"


def test_timestamp_is_iso_8601_utc() -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2026, 11, 23, 13, 0, tzinfo=ZoneInfo("Europe/Paris"))
    event = build_trigger(note(), routing_key="k", source="s", now=local)
    assert event["payload"]["timestamp"] == "2026-11-23T12:00:00.000+00:00"


def test_reserved_custom_details_keys_cannot_be_overwritten_by_metadata() -> None:
    event = build_trigger(
        note(body="real body", metadata={"body": "spoofed"}), routing_key="k", source="s"
    )
    assert event["payload"]["custom_details"]["body"] == "real body"


def test_images_must_be_https() -> None:
    from worker.exceptions import NotificationDeliveryError

    with pytest.raises(NotificationDeliveryError, match=r"metadata\.images\.0\.src"):
        build_trigger(note(metadata={"images": [{"src": "http://x"}]}), routing_key="k", source="s")


def test_oversize_shedding_goes_as_far_as_links_when_needed() -> None:
    links = [{"href": "https://example/" + "l" * 1000} for _ in range(600)]
    event = build_trigger(
        note(metadata={"links": links, "blob": "b" * 1000}), routing_key="k", source="s"
    )
    assert len(encode_event(event)) <= MAX_EVENT_BYTES
    assert "links" not in event
    assert "links and images removed too" in event["payload"]["custom_details"]["note"]


def test_event_within_limit_is_untouched() -> None:
    event = {"payload": {"custom_details": {"a": 1}}}
    assert fit_event_size(event) is event


def test_lifecycle_and_change_bodies() -> None:
    assert build_lifecycle(EventAction.RESOLVE, routing_key="k", dedup_key="d") == {
        "routing_key": "k",
        "event_action": "resolve",
        "dedup_key": "d",
    }
    change = build_change(routing_key="k", summary="deploy", source="ci", timestamp=NOW)
    assert change == {
        "routing_key": "k",
        "payload": {"summary": "deploy", "timestamp": NOW.isoformat(), "source": "ci"},
    }


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": format_datetime(NOW + timedelta(seconds=90), usegmt=True)}, 90.0),
        ({"retry-after": format_datetime(NOW - timedelta(seconds=90), usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "soon", "ratelimit-reset": "7"}, 7.0),
        ({"ratelimit-reset": "30"}, 30.0),
        ({"ratelimit-reset": "later"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_change_url_is_derived_from_the_alert_url() -> None:
    assert (
        change_url_for("https://events.eu.pagerduty.com/v2/enqueue")
        == "https://events.eu.pagerduty.com/v2/change/enqueue"
    )
    assert change_url_for("http://127.0.0.1:8025/v2/enqueue/") == (
        "http://127.0.0.1:8025/v2/change/enqueue"
    )
