"""The notification models and the exception tree: validation, JSON and pickle."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

import worker.exceptions as exceptions_module
from worker.exceptions import (
    NotificationConfigError,
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationError,
    NotificationRateLimitError,
    NotificationTimeoutError,
)
from worker.providers.base import (
    Notification,
    NotificationPriority,
    NotificationResult,
    NotificationStatus,
)

EXAMPLES: list[NotificationError] = [
    NotificationError("base", "pagerduty"),
    NotificationConfigError("routing key is required", "pagerduty"),
    NotificationConnectionError("refused", "smtp"),
    NotificationTimeoutError("slow", 12.5, "pagerduty"),
    NotificationRateLimitError("throttled", 30.0, "pagerduty"),
    NotificationRateLimitError("throttled, no hint", None),
    NotificationDeliveryError("rejected", 400, ["bad severity"], False, "pagerduty"),
    NotificationDeliveryError("server error", 503, [], None, "pagerduty"),
    NotificationDeliveryError("mailbox unavailable", 550, ["550 no such user"], False, "smtp"),
]


def same(a: NotificationError, b: NotificationError) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    assert a.args == b.args
    assert a.retryable == b.retryable
    assert a.provider == b.provider
    for attr in ("timeout_seconds", "retry_after_seconds", "status_code", "errors"):
        assert getattr(a, attr, None) == getattr(b, attr, None)


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_survive_pickle(error: NotificationError) -> None:
    same(error, pickle.loads(pickle.dumps(error)))  # noqa: S301 - our own bytes


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_survive_a_json_round_trip(error: NotificationError) -> None:
    same(error, NotificationError.from_dict(json.loads(json.dumps(error.to_dict()))))


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_rebuild_as_celery_rebuilds_them(error: NotificationError) -> None:
    # Celery's JSON serializer sends exc_type plus exc_message=args and calls cls(*args).
    args = json.loads(json.dumps(list(error.args)))
    same(error, type(error)(*args))


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (NotificationConfigError("x"), False),
        (NotificationConnectionError("x"), True),
        (NotificationTimeoutError("x", 1), True),
        (NotificationRateLimitError("x"), True),
        (NotificationDeliveryError("x", 400), False),
        (NotificationDeliveryError("x", 404), False),
        (NotificationDeliveryError("x", 500), True),
        (NotificationDeliveryError("x", 503), True),
        (NotificationDeliveryError("x"), True),
        (NotificationDeliveryError("x", 550, retryable=False), False),
        (NotificationDeliveryError("x", 421, retryable=True), True),
    ],
)
def test_each_error_says_whether_a_retry_can_help(error: Any, retryable: bool) -> None:
    assert error.retryable is retryable
    assert isinstance(error, NotificationError)


def test_from_dict_falls_back_safely() -> None:
    unknown = NotificationError.from_dict({"type": "Nope", "args": ["m"]})
    assert type(unknown) is NotificationError
    no_args = NotificationError.from_dict({"type": "NotificationTimeoutError", "message": "m"})
    assert type(no_args) is NotificationTimeoutError
    assert str(no_args) == "m"


def test_the_tree_is_drawn_in_the_module_docstring() -> None:
    doc = exceptions_module.__doc__ or ""
    for name in exceptions_module.__all__:
        assert name in doc


def test_str_is_the_message_and_repr_names_the_class() -> None:
    error = NotificationTimeoutError("no answer", 30)
    assert str(error) == "no answer"
    assert repr(error) == "NotificationTimeoutError('no answer')"
    assert error.timeout_seconds == 30


# -- models -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["recipient", "subject"])
@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_blank_recipient_or_subject_is_refused_naming_the_field(field: str, value: str) -> None:
    fields = {"recipient": "r", "subject": "s", field: value}
    with pytest.raises(ValidationError) as caught:
        Notification.model_validate(fields)
    [error] = caught.value.errors()
    assert error["loc"] == (field,)
    assert "must not be blank" in error["msg"]


def test_unknown_fields_and_bad_priorities_are_named() -> None:
    with pytest.raises(ValidationError) as caught:
        Notification.model_validate(
            {"recipient": "r", "subject": "s", "sevrity": "x", "priority": "loud"}
        )
    locs = {e["loc"] for e in caught.value.errors()}
    assert locs == {("sevrity",), ("priority",)}


@pytest.mark.parametrize(
    "value", ["critical", "CRITICAL", "Critical", NotificationPriority.CRITICAL]
)
def test_priority_in_any_case(value: Any) -> None:
    n = Notification(recipient="r", subject="s", priority=value)
    assert n.priority is NotificationPriority.CRITICAL


def test_notification_round_trips_through_json_without_loss() -> None:
    n = Notification(
        recipient="Jürgen <j@example.com>",
        subject="Réplica — 数据库 🚨",
        body="line 1\nline 2",
        body_html="<p>ü</p>",
        priority=NotificationPriority.EMERGENCY,
        alert_name="ReplicaLag",
        db_instance_id=42,
        idempotency_id="alert-1",
        metadata={"team": "dba", "nested": {"list": [1, 2.5, None, True, "x"]}},
    )
    again = Notification.model_validate_json(n.model_dump_json())
    assert again == n
    assert again.db_instance_id == 42
    assert Notification(recipient="r", subject="s", db_instance_id="db-7").db_instance_id == "db-7"


def test_a_db_instance_id_of_true_or_false_is_refused_not_read_as_a_number() -> None:
    with pytest.raises(ValidationError, match=r"db_instance_id\n.*must be an integer or a string"):
        Notification.model_validate_json(
            '{"recipient": "r", "subject": "s", "db_instance_id": true}'
        )


def test_metadata_must_be_json() -> None:
    with pytest.raises(ValidationError) as caught:
        Notification.model_validate({"recipient": "r", "subject": "s", "metadata": {"w": object()}})
    assert caught.value.errors()[0]["loc"][0] == "metadata"


def test_a_bad_value_deep_in_metadata_is_named_by_its_keys_and_indexes() -> None:
    from worker.validation import validation_errors

    deep = {"n": [1, {"a": {1, 2}}], "dict": {"list": [object()]}}
    with pytest.raises(ValidationError) as caught:
        Notification.model_validate({"recipient": "r", "subject": "s", "metadata": deep})
    fields = sorted(e["field"] for e in validation_errors(caught.value))
    # Keys named like pydantic's tags ("dict", "list") are kept: they are the producer's.
    assert fields == ["metadata.dict.list.0", "metadata.n.1.a"]


def test_building_a_notification_badly_raises_the_one_line_error_enqueue_raises() -> None:
    import tasks

    with pytest.raises(tasks.InvalidJobError) as caught:
        Notification(recipient="", subject="Disk full", priority="urgent")
    assert str(caught.value) == (
        "invalid notification: recipient: must not be blank; priority: Input should be "
        "'low', 'normal', 'high', 'critical' or 'emergency'"
    )
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert [e["field"] for e in caught.value.errors] == ["recipient", "priority"]
    again = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own bytes
    assert (str(again), again.errors) == (str(caught.value), caught.value.errors)


def test_priority_order() -> None:
    order = list(NotificationPriority)
    assert [p.value for p in order] == ["low", "normal", "high", "critical", "emergency"]
    assert [p.rank for p in order] == [0, 1, 2, 3, 4]
    assert NotificationPriority.EMERGENCY.at_least(NotificationPriority.CRITICAL)
    assert not NotificationPriority.HIGH.at_least(NotificationPriority.CRITICAL)


def test_statuses() -> None:
    assert {s.value for s in NotificationStatus} == {
        "pending",
        "sent",
        "delivered",
        "failed",
        "bounced",
        "rate_limited",
        "blackout",
    }


def test_result_timestamps_are_utc() -> None:
    now = NotificationResult(status="sent", recipient="r", provider="p")
    assert now.timestamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - now.timestamp) < timedelta(seconds=5)
    naive = NotificationResult(
        status="sent", recipient="r", provider="p", timestamp=datetime(2026, 1, 1, 12)
    )
    assert naive.timestamp == datetime(2026, 1, 1, 12, tzinfo=UTC)
    paris = datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    converted = NotificationResult(status="sent", recipient="r", provider="p", timestamp=paris)
    assert converted.timestamp == paris
    assert converted.timestamp.utcoffset() == timedelta(0)


def test_result_round_trips_and_classifies() -> None:
    result = NotificationResult(
        status=NotificationStatus.RATE_LIMITED,
        recipient="r",
        provider="pagerduty",
        message_id="m",
        error_message="slow down",
        retry_after=30.0,
        metadata={"dedup_key": "k"},
    )
    assert NotificationResult.model_validate_json(result.model_dump_json()) == result
    assert result.is_retriable()
    assert not result.is_success()
    for status in ("sent", "delivered"):
        ok = NotificationResult(status=status, recipient="r", provider="p")
        assert ok.is_success()
        assert not ok.is_retriable()
    failed = NotificationResult(status="failed", recipient="r", provider="p")
    assert not failed.is_retriable()
    assert NotificationResult(
        status="failed", recipient="r", provider="p", retryable=True
    ).is_retriable()
