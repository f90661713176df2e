"""The sandbox checked with PagerDuty's own Python client (``pagerduty`` on PyPI), a client
nobody here wrote: if it works against the sandbox, the sandbox speaks PagerDuty."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pagerduty
import pytest
import trustme

from sandbox import EmulatorOptions, SandboxServer
from tests.conftest import SandboxClient, client_tls, server_tls


@pytest.fixture
def sandbox(ca: trustme.CA) -> Iterator[SandboxServer]:
    """The sandbox over HTTPS: the official client refuses any base URL that is not https."""
    tls = server_tls(ca)
    with SandboxServer(options=EmulatorOptions(rate_limit=0), ssl_context=tls) as s:
        yield s


@pytest.fixture
def sandbox_api(sandbox: SandboxServer, ca: trustme.CA) -> Iterator[SandboxClient]:
    client = SandboxClient(sandbox, verify=client_tls(ca))
    yield client
    client.close()


@pytest.fixture
def client(
    sandbox: SandboxServer, ca: trustme.CA, routing_key: str
) -> Iterator[pagerduty.EventsApiV2Client]:
    assert sandbox.url.startswith("https://")
    events = pagerduty.EventsApiV2Client(routing_key, base_url=sandbox.url, verify=client_tls(ca))
    events.sleep_timer = 0.05  # its cooldown before retrying a 429, shortened for the test
    yield events
    events.close()


def test_trigger_acknowledge_resolve(
    client: pagerduty.EventsApiV2Client, sandbox_api: SandboxClient
) -> None:
    dedup_key = client.trigger("Replica lag over 30s", "db-replica-2", severity="error")
    assert dedup_key
    [incident] = sandbox_api.incidents()
    assert (incident["dedup_key"], incident["status"]) == (dedup_key, "triggered")
    assert incident["summary"] == "Replica lag over 30s"
    assert client.acknowledge(dedup_key) == dedup_key
    assert sandbox_api.incidents()[0]["status"] == "acknowledged"
    assert client.resolve(dedup_key) == dedup_key
    assert sandbox_api.incidents()[0]["status"] == "resolved"


def test_trigger_with_its_own_dedup_key_appends(
    client: pagerduty.EventsApiV2Client, sandbox_api: SandboxClient
) -> None:
    assert client.trigger("Disk 91%", "db-1", dedup_key="disk-db-1") == "disk-db-1"
    assert client.trigger("Disk 95%", "db-1", dedup_key="disk-db-1") == "disk-db-1"
    [incident] = sandbox_api.incidents()
    assert incident["alert_count"] == 2


def test_invalid_event_raises_its_http_error(
    client: pagerduty.EventsApiV2Client, sandbox_api: SandboxClient
) -> None:
    with pytest.raises(pagerduty.HttpError) as caught:
        client.trigger("x" * 2000, "db-1")
    response = caught.value.response
    assert response is not None
    assert response.status_code == 400
    assert "maiximum is 1024" in response.text
    assert sandbox_api.incidents() == []


def test_change_event(client: pagerduty.EventsApiV2Client, sandbox_api: SandboxClient) -> None:
    # Its submit() helper trips over its own timestamp code (pagerduty 7.2.0:
    # datetime.timezone on the datetime class), so the event is sent with send_change_event.
    stamp = datetime.now(UTC).isoformat()
    client.send_change_event(
        payload={"summary": "Deployed 1.2.3", "source": "ci", "timestamp": stamp}
    )
    assert sandbox_api.events()[-1]["status"] == 202
    assert sandbox_api.events()[-1]["answer"]["message"] == "Change event processed"


def test_rate_limit_429(client: pagerduty.EventsApiV2Client, sandbox_api: SandboxClient) -> None:
    sandbox_api.settings(rate_limit=1, rate_window=60)
    client.trigger("first", "db-1", dedup_key="a")
    client.retry[429] = 1  # by default it retries a 429 for ever; let it give up instead
    with pytest.raises(pagerduty.HttpError) as caught:
        client.trigger("second", "db-1", dedup_key="b")
    assert caught.value.response is not None
    assert caught.value.response.status_code == 429
    assert [e["status"] for e in sandbox_api.events()] == [202, 429, 429]


def test_its_default_429_loop_gets_through_once_the_window_slides(
    client: pagerduty.EventsApiV2Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(rate_limit=1, rate_window=0.5)
    client.trigger("first", "db-1", dedup_key="a")
    assert client.trigger("second", "db-1", dedup_key="b") == "b"
    statuses = [e["status"] for e in sandbox_api.events()]
    assert statuses[0] == 202
    assert statuses[-1] == 202
    assert 429 in statuses
