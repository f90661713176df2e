"""PagerDutyProvider against the sandbox over real HTTP: every answer class, every limit,
every lifecycle step."""

from __future__ import annotations

import logging
import pickle
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from config.settings import get_settings
from sandbox import SandboxServer
from tests.conftest import OTHER_KEY, SandboxClient, closed_port_url
from worker.exceptions import (
    NotificationConfigError,
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationError,
    NotificationRateLimitError,
    NotificationTimeoutError,
)
from worker.providers import PagerDutyProvider
from worker.providers.base import Notification, NotificationPriority, NotificationStatus
from worker.providers.pagerduty import PagerDutySeverity


@pytest.fixture
def provider(sandbox: SandboxServer, routing_key: str) -> PagerDutyProvider:
    return PagerDutyProvider(routing_key, timeout=2, api_url=sandbox.api_url)


def page(**fields: object) -> Notification:
    values: dict[str, object] = {
        "recipient": "database-service",
        "subject": "High CPU on db-prod-01",
        "body": "CPU above 90% for 5 minutes",
        "priority": NotificationPriority.CRITICAL,
        "alert_name": "HighCPU",
        "db_instance_id": 42,
        "idempotency_id": "alert-12345",
    }
    values.update(fields)
    return Notification.model_validate(values)


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", None])
def test_empty_routing_key_is_a_config_error(key: str | None) -> None:
    with pytest.raises(NotificationConfigError, match="routing key is required"):
        PagerDutyProvider(key, api_url="http://127.0.0.1:1/v2/enqueue")


def test_attributes_and_defaults(routing_key: str) -> None:
    provider = PagerDutyProvider(routing_key, api_url="http://127.0.0.1:1/v2/enqueue")
    assert provider.name == "pagerduty"
    assert provider.routing_key == routing_key
    assert provider.timeout == 30
    assert provider.default_severity is PagerDutySeverity.ERROR
    assert provider.source == "gds_notification"


def test_bad_default_severity_is_a_config_error(routing_key: str) -> None:
    with pytest.raises(NotificationConfigError, match="critical, error, warning, info"):
        PagerDutyProvider(routing_key, default_severity="loud", api_url="http://x/v2/enqueue")


def test_api_url_defaults_to_the_setting(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, routing_key: str
) -> None:
    monkeypatch.setenv("PAGERDUTY_API_URL", sandbox.api_url)
    get_settings.cache_clear()
    try:
        provider = PagerDutyProvider(routing_key)
        assert provider.api_url == sandbox.api_url
        assert provider.trigger(page()).is_success()
    finally:
        get_settings.cache_clear()


def test_routing_key_never_in_repr_str_or_errors(
    routing_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = PagerDutyProvider(routing_key, timeout=1, api_url=closed_port_url())
    assert routing_key not in repr(provider)
    assert routing_key not in str(provider)
    assert routing_key[-4:] in repr(provider)
    with pytest.raises(NotificationConnectionError) as caught:
        provider.trigger(page())
    assert routing_key not in str(caught.value)
    assert routing_key not in repr(caught.value)
    assert routing_key not in caplog.text


# -- the lifecycle --------------------------------------------------------------------


def test_trigger_acknowledge_resolve(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    result = provider.trigger(page())
    assert result.is_success()
    assert result.status is NotificationStatus.SENT
    assert result.metadata["dedup_key"] == "alert-12345"
    assert result.provider == "pagerduty"
    [incident] = sandbox_api.incidents()
    assert incident["status"] == "triggered"

    assert provider.acknowledge("alert-12345").is_success()
    assert sandbox_api.incidents()[0]["status"] == "acknowledged"
    resolved = provider.resolve("alert-12345")
    assert resolved.is_success()
    assert resolved.metadata["action"] == "resolve"
    assert sandbox_api.incidents()[0]["status"] == "resolved"


def test_send_is_trigger(provider: PagerDutyProvider, sandbox_api: SandboxClient) -> None:
    assert provider.send(page()).metadata["action"] == "trigger"
    assert len(sandbox_api.incidents(status="triggered")) == 1


def test_trigger_body_carries_every_field(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    notification = page(
        metadata={
            "team": "dba",
            "region": "eu-west-1",
            "links": [{"href": "https://runbooks.example/cpu", "text": "Runbook"}],
            "images": [{"src": "https://graphs.example/cpu.png", "alt": "CPU"}],
        }
    )
    provider.trigger(notification)
    event = sandbox_api.events()[-1]["body"]
    payload = event["payload"]
    assert event["dedup_key"] == "alert-12345"
    assert payload["summary"] == "High CPU on db-prod-01"
    assert payload["severity"] == "critical"
    assert payload["source"] == "gds_notification"
    assert payload["component"] == "database-service"
    assert payload["class"] == "HighCPU"
    assert payload["group"] == "dba"
    assert payload["custom_details"] == {
        "body": "CPU above 90% for 5 minutes",
        "alert_name": "HighCPU",
        "db_instance_id": 42,
        "priority": "critical",
        "region": "eu-west-1",
    }
    assert event["links"] == [{"href": "https://runbooks.example/cpu", "text": "Runbook"}]
    assert event["images"] == [{"src": "https://graphs.example/cpu.png", "alt": "CPU"}]
    stamp = datetime.fromisoformat(payload["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("priority", "severity"),
    [
        ("low", "info"),
        ("normal", "warning"),
        ("high", "error"),
        ("critical", "critical"),
        ("emergency", "critical"),
    ],
)
def test_severity_from_priority(
    provider: PagerDutyProvider, sandbox_api: SandboxClient, priority: str, severity: str
) -> None:
    provider.trigger(page(priority=priority))
    assert sandbox_api.incidents()[0]["severity"] == severity


def test_same_dedup_key_appends_and_other_keys_are_untouched(
    sandbox: SandboxServer, provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    other = PagerDutyProvider(OTHER_KEY, timeout=2, api_url=sandbox.api_url)
    provider.trigger(page())
    provider.trigger(page(body="CPU at 95%"))
    other.trigger(page())
    incidents = sandbox_api.incidents()
    assert [i["alert_count"] for i in incidents] == [2, 1]
    other.resolve("alert-12345")
    assert [i["status"] for i in sandbox_api.incidents()] == ["triggered", "resolved"]


def test_trigger_after_resolve_opens_a_new_incident(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    provider.trigger(page())
    provider.resolve("alert-12345")
    provider.trigger(page())
    assert [i["status"] for i in sandbox_api.incidents()] == ["resolved", "triggered"]


def test_ack_or_resolve_of_unknown_key_is_accepted_and_dropped(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    assert provider.acknowledge("never-triggered").is_success()
    assert provider.resolve("never-triggered").is_success()
    assert sandbox_api.incidents() == []


def test_without_idempotency_id_a_retry_reuses_the_derived_key(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    first = provider.trigger(page(idempotency_id=None))
    again = provider.trigger(page(idempotency_id=None))
    assert first.metadata["dedup_key"] == again.metadata["dedup_key"]
    [incident] = sandbox_api.incidents()
    assert incident["alert_count"] == 2
    different = provider.trigger(page(idempotency_id=None, subject="Disk full"))
    assert different.metadata["dedup_key"] != first.metadata["dedup_key"]


def test_change_event(provider: PagerDutyProvider, sandbox_api: SandboxClient) -> None:
    result = provider.change("Deployed v1.2.3", custom_details={"build": 77})
    assert result.is_success()
    event = sandbox_api.events()[-1]
    assert event["path"] == "/v2/change/enqueue"
    assert event["status"] == 202
    assert sandbox_api.incidents() == []


# -- PagerDuty's limits, handled before sending -----------------------------------------


def test_long_summary_is_cut_to_1024_ending_in_ellipsis(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    assert provider.trigger(page(subject="x" * 5000)).is_success()
    summary = sandbox_api.incidents()[0]["summary"]
    assert len(summary) == 1024
    assert summary.endswith("…")


def test_a_summary_of_emoji_fits_1024_however_pagerduty_counts_characters(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    """PagerDuty documents its limits in characters without saying which: in UTF-16 units
    (a JVM's, JavaScript's count) an emoji is two, and 1,024 of them are 2,048."""
    assert provider.trigger(page(subject="🔥" * 2000, metadata={"source": "📟" * 600})).is_success()
    [event] = sandbox_api.events()
    payload = event["body"]["payload"]
    for field in ("summary", "source"):
        assert len(payload[field].encode("utf-16-le")) // 2 <= 1024
        assert payload[field].endswith("…")
    assert payload["summary"] == "🔥" * 511 + "…"


def test_oversized_event_sheds_custom_details_with_a_note(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    assert provider.trigger(page(body="y" * 600_000)).is_success()
    [event] = sandbox_api.events()
    assert event["status"] == 202
    details = event["body"]["payload"]["custom_details"]
    assert "body" not in details
    assert "512000-byte limit" in details["note"]


def test_a_huge_client_is_cut_and_a_client_url_too_long_to_follow_left_out(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    """Unbounded, they kept the event over 512 KB after every shedding: refused, and the
    page dead-lettered."""
    huge = {"client": "c" * 600_000, "client_url": "https://ci.example/" + "u" * 9000}
    assert provider.trigger(page(metadata=huge)).is_success()
    [event] = sandbox_api.events()
    assert event["status"] == 202
    assert event["body"]["client"] == "c" * 1023 + "…"
    assert "client_url" not in event["body"]


def test_long_dedup_key_becomes_a_stable_hash(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    long_key = "k" * 400
    first = provider.trigger(page(idempotency_id=long_key))
    key = str(first.metadata["dedup_key"])
    assert len(key) <= 255
    assert key.startswith("sha256:")
    assert provider.trigger(page(idempotency_id=long_key)).metadata["dedup_key"] == key
    provider.acknowledge(long_key)
    assert sandbox_api.incidents()[0]["status"] == "acknowledged"


def test_malformed_links_are_refused_before_sending(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    """A page queued before intake checked links (or built here directly)."""
    with pytest.raises(NotificationDeliveryError, match=r"metadata\.links\.0\.href") as caught:
        provider.trigger(page(metadata={"links": [{"text": "no href"}]}))
    assert not caught.value.retryable
    assert sandbox_api.events() == []


# -- every answer class -----------------------------------------------------------------


def test_invalid_event_is_a_final_rejection_with_pagerduty_errors(sandbox: SandboxServer) -> None:
    provider = PagerDutyProvider("not-a-valid-key", timeout=2, api_url=sandbox.api_url)
    with pytest.raises(NotificationDeliveryError) as caught:
        provider.trigger(page())
    error = caught.value
    assert "rejected event" in str(error)
    assert error.status_code == 400
    assert not error.retryable
    assert "Length of 'routing_key' is incorrect (should be 32 characters)" in error.errors
    assert "not-a-valid-key" not in str(error)


def test_invalid_routing_key_plain_text_is_a_final_rejection(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(strict_keys=[OTHER_KEY])
    with pytest.raises(NotificationDeliveryError, match="rejected event: Invalid routing key") as c:
        provider.trigger(page())
    assert c.value.errors == ["Invalid routing key"]
    assert not c.value.retryable


def test_accepted_without_dedup_key_is_retryable(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"status": 202, "body": '{"status": "success"}'})
    with pytest.raises(NotificationDeliveryError, match="without a dedup_key") as caught:
        provider.trigger(page())
    assert caught.value.retryable


def test_accepted_with_a_status_other_than_success_is_retryable(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    """The Events API's schema: ``status`` is "success", or a short error message."""
    sandbox_api.faults({"status": 202, "body": '{"status": "throttled", "dedup_key": "k"}'})
    with pytest.raises(NotificationDeliveryError, match="status 'throttled'") as caught:
        provider.trigger(page())
    assert caught.value.retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retryable(
    provider: PagerDutyProvider, sandbox_api: SandboxClient, status: int
) -> None:
    sandbox_api.faults({"status": status})
    with pytest.raises(NotificationDeliveryError) as caught:
        provider.trigger(page())
    assert caught.value.status_code == status
    assert caught.value.retryable
    assert provider.trigger(page()).is_success()  # the fault was one answer only


def test_rate_limit_without_retry_after(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(rate_limit=2, rate_window=60)
    provider.trigger(page())
    provider.trigger(page())
    with pytest.raises(NotificationRateLimitError) as caught:
        provider.trigger(page())
    assert caught.value.retry_after_seconds is None
    assert caught.value.retryable
    assert sandbox_api.events()[-1]["status"] == 429


def test_rate_limit_with_retry_after_seconds_from_the_sliding_window(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(rate_limit=1, rate_window=30, retry_after=True)
    provider.trigger(page())
    with pytest.raises(NotificationRateLimitError) as caught:
        provider.trigger(page())
    assert caught.value.retry_after_seconds is not None
    assert 25 <= caught.value.retry_after_seconds <= 30


def test_rate_limit_with_retry_after_http_date(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    sandbox_api.faults({"status": 429, "retry_after": when})
    with pytest.raises(NotificationRateLimitError) as caught:
        provider.trigger(page())
    assert caught.value.retry_after_seconds is not None
    assert 100 < caught.value.retry_after_seconds <= 120


def test_rate_limit_with_ratelimit_reset_header(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"status": 429, "headers": {"ratelimit-reset": "17"}})
    with pytest.raises(NotificationRateLimitError) as caught:
        provider.trigger(page())
    assert caught.value.retry_after_seconds == 17


def test_slow_answer_is_a_timeout(sandbox: SandboxServer, sandbox_api: SandboxClient) -> None:
    provider = PagerDutyProvider(
        "R0UT1NGKEY0000000000000000000001", timeout=0.3, api_url=sandbox.api_url
    )
    sandbox_api.faults({"delay": 1.0})
    with pytest.raises(NotificationTimeoutError) as caught:
        provider.trigger(page())
    assert caught.value.timeout_seconds == 0.3
    assert caught.value.retryable


def test_dropped_connection_is_a_connection_error(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"drop": True})
    with pytest.raises(NotificationConnectionError) as caught:
        provider.trigger(page())
    assert caught.value.retryable


def test_refused_connection_is_a_connection_error(routing_key: str) -> None:
    provider = PagerDutyProvider(routing_key, timeout=2, api_url=closed_port_url())
    with pytest.raises(NotificationConnectionError, match="cannot reach PagerDuty"):
        provider.trigger(page())


def test_credentials_in_the_api_url_are_never_shown(routing_key: str) -> None:
    """A URL through a proxy that wants basic auth: the error that goes into job records
    and logs, and the provider's repr, show the host without the user and password."""
    url = closed_port_url().replace("http://", "http://relay:hunter2pass@")
    provider = PagerDutyProvider(routing_key, timeout=2, api_url=url)
    with pytest.raises(NotificationConnectionError) as caught:
        provider.trigger(page())
    assert "cannot reach PagerDuty at http://…@127.0.0.1:" in str(caught.value)
    for shown in (str(caught.value), repr(provider), provider.diagnose() or ""):
        assert "hunter2pass" not in shown
        assert "relay" not in shown


def test_errors_raised_by_the_provider_survive_pickle(
    provider: PagerDutyProvider, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"status": 503})
    with pytest.raises(NotificationError) as caught:
        provider.trigger(page())
    clone = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own bytes
    assert type(clone) is type(caught.value)
    assert str(clone) == str(caught.value)
    assert clone.retryable


# -- health and resources -----------------------------------------------------------------


def test_health_check_sends_no_event_anyone_sees(
    provider: PagerDutyProvider, sandbox_api: SandboxClient, routing_key: str
) -> None:
    """It sends an empty event, which the Events API refuses naming what is missing: no
    routing key goes with it and no incident opens; a URL that answers otherwise fails."""
    assert provider.health_check() is True
    [probe] = sandbox_api.events()
    assert (probe["body"], probe["status"]) == ({}, 400)
    assert sandbox_api.incidents() == []
    assert PagerDutyProvider(routing_key, api_url=closed_port_url()).health_check() is False
    elsewhere = provider.api_url.replace("/v2/enqueue", "/v2/elsewhere")
    assert PagerDutyProvider(routing_key, api_url=elsewhere).health_check() is False


def test_context_manager_reuses_one_client_and_closes_it(
    sandbox: SandboxServer, routing_key: str
) -> None:
    with PagerDutyProvider(routing_key, api_url=sandbox.api_url) as provider:
        provider.trigger(page())
        client = provider._client
        provider.acknowledge("alert-12345")
        assert provider._client is client
    assert client is not None
    assert client.is_closed
