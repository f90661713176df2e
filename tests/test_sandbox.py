"""The PagerDuty emulator over raw HTTP: answers, incident state, strict keys, rate limits,
faults and the inspection endpoints, checked against the reference sheet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import EmulatorOptions, SandboxServer
from sandbox.ratelimit import SlidingWindowLimiter
from tests.conftest import OTHER_KEY, ROUTING_KEY, SandboxClient


@pytest.fixture
def http(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as client:
        yield client


def trigger(key: str = ROUTING_KEY, dedup_key: str | None = "k1", **payload: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routing_key": key,
        "event_action": "trigger",
        "payload": {"summary": "Disk full", "source": "db-1", "severity": "error", **payload},
    }
    if dedup_key is not None:
        body["dedup_key"] = dedup_key
    return body


def action(name: str, dedup_key: str, key: str = ROUTING_KEY) -> dict[str, Any]:
    return {"routing_key": key, "event_action": name, "dedup_key": dedup_key}


# -- answers --------------------------------------------------------------------------


def test_trigger_is_accepted_with_the_documented_body(http: httpx.Client) -> None:
    answer = http.post("/v2/enqueue", json=trigger())
    assert answer.status_code == 202
    assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": "k1"}


def test_trigger_without_dedup_key_gets_a_generated_one_and_a_new_incident_each_time(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    keys = {http.post("/v2/enqueue", json=trigger(dedup_key=None)).json()["dedup_key"]}
    keys.add(http.post("/v2/enqueue", json=trigger(dedup_key=None)).json()["dedup_key"])
    assert len(keys) == 2
    assert all(keys)
    assert len(sandbox_api.incidents()) == 2


def test_every_validation_error_is_listed_with_pagerduty_texts(http: httpx.Client) -> None:
    answer = http.post(
        "/v2/enqueue",
        json={
            "routing_key": "short-key!",
            "event_action": "trigger",
            "payload": {"summary": "s" * 1025, "severity": "loud"},
        },
    )
    assert answer.status_code == 400
    body = answer.json()
    assert body["status"] == "invalid event"
    assert body["message"] == "Event object is invalid"
    assert body["errors"] == [
        "Length of 'routing_key' is incorrect (should be 32 characters)",
        "'routing_key' cannot contain non-alphanumeric characters.",
        "'summary' is too long (maiximum is 1024 characters)",
        "'payload.source' is missing or blank",
        "'payload.severity' is invalid (must be one of the following: "
        "'critical', 'warning', 'error' or 'info')",
    ]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (trigger(severity=""), "'payload.severity' is missing or blank"),
        (trigger(source=" "), "'payload.source' is missing or blank"),
        ({"routing_key": ROUTING_KEY, "event_action": "trigger"}, "'payload' is missing or blank"),
        (action("resolve", ""), "'dedup_key' is missing or blank"),
        (action("explode", "k"), "'event_action' is invalid"),
        (trigger(dedup_key="d" * 256), "'dedup_key' is too long (maximum is 255 characters)"),
        (trigger(timestamp="yesterday"), "'payload.timestamp' is invalid"),
        ({**trigger(), "links": [{"text": "x"}]}, "'links[0].href' is missing or blank"),
        ({**trigger(), "images": [{"src": "http://x"}]}, "'images[0].src' must be an https URL"),
        (
            {**trigger(), "routing_key": "a" * 31 + "-"},
            "'routing_key' cannot contain non-alphanumeric",
        ),
    ],
)
def test_single_validation_errors(http: httpx.Client, event: dict[str, Any], error: str) -> None:
    answer = http.post("/v2/enqueue", json=event)
    assert answer.status_code == 400
    assert any(e.startswith(error) for e in answer.json()["errors"]), answer.json()


def test_oversized_event_is_rejected(http: httpx.Client) -> None:
    answer = http.post("/v2/enqueue", json=trigger(custom_details={"blob": "x" * 600_000}))
    assert answer.status_code == 400
    assert "Event object is too large (maximum is 512000 bytes)" in answer.json()["errors"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_json_is_answered_as_pagerduty_does(http: httpx.Client, raw: bytes) -> None:
    answer = http.post("/v2/enqueue", content=raw)
    assert answer.status_code == 400
    assert answer.json() == {
        "status": "Unrecognized object",
        "message": "Event object format is unrecognized",
        "errors": ["JSON parse error"],
    }


def test_payload_on_acknowledge_is_accepted_and_ignored(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    http.post("/v2/enqueue", json=trigger())
    answer = http.post("/v2/enqueue", json={**action("acknowledge", "k1"), "payload": {"x": 1}})
    assert answer.status_code == 202
    assert sandbox_api.incidents()[0]["status"] == "acknowledged"


def test_change_events(http: httpx.Client, sandbox_api: SandboxClient) -> None:
    ok = http.post(
        "/v2/change/enqueue",
        json={"routing_key": ROUTING_KEY, "payload": {"summary": "Deploy", "source": "ci"}},
    )
    assert ok.status_code == 202
    assert ok.json() == {"status": "success", "message": "Change event processed"}
    bad = http.post("/v2/change/enqueue", json={"routing_key": ROUTING_KEY, "payload": {}})
    assert bad.status_code == 400
    assert "'payload.summary' is missing or blank" in bad.json()["errors"]
    assert sandbox_api.incidents() == []


# -- incident state ---------------------------------------------------------------------


def test_incident_lifecycle_per_routing_and_dedup_key(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    def send(event: dict[str, Any]) -> None:
        assert http.post("/v2/enqueue", json=event).status_code == 202

    send(trigger())
    send(trigger())  # appended to the open incident
    send(trigger(key=OTHER_KEY))  # same dedup key, other routing key: separate
    send(action("acknowledge", "k1"))
    send(trigger())  # still appends while acknowledged
    incidents = sandbox_api.incidents()
    assert [(i["status"], i["alert_count"]) for i in incidents] == [
        ("acknowledged", 3),
        ("triggered", 1),
    ]
    send(action("resolve", "k1"))
    send(action("resolve", "k1"))  # dropped: already resolved
    send(action("acknowledge", "k1"))  # dropped
    send(action("resolve", "unknown"))  # dropped: unknown key
    send(trigger())  # new incident after resolve
    incidents = sandbox_api.incidents()
    assert [i["status"] for i in incidents] == ["resolved", "triggered", "triggered"]
    assert [a["action"] for a in incidents[0]["timeline"]] == [
        "trigger",
        "trigger",
        "acknowledge",
        "trigger",
        "resolve",
    ]
    assert incidents[1]["routing_key"].endswith(OTHER_KEY[-4:])
    assert ROUTING_KEY not in str(incidents)
    assert len(sandbox_api.incidents(status="triggered", dedup_key="k1")) == 2


# -- strict keys and rate limits ---------------------------------------------------------


def test_strict_mode_answers_plain_text_for_unknown_keys(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(strict_keys=[ROUTING_KEY])
    assert http.post("/v2/enqueue", json=trigger()).status_code == 202
    answer = http.post("/v2/enqueue", json=trigger(key=OTHER_KEY))
    assert answer.status_code == 400
    assert answer.text == "Invalid routing key"
    assert answer.headers["content-type"].startswith("text/plain")
    malformed = http.post("/v2/enqueue", json=trigger(key="bad"))
    assert malformed.json()["status"] == "invalid event"


def test_sliding_window_rate_limit_per_key(http: httpx.Client, sandbox_api: SandboxClient) -> None:
    sandbox_api.settings(rate_limit=3, rate_window=0.5)
    statuses = [http.post("/v2/enqueue", json=trigger()).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    other = http.post("/v2/enqueue", json=trigger(key=OTHER_KEY))
    assert other.status_code == 202  # another key has its own window
    limited = http.post("/v2/enqueue", json=trigger())
    assert limited.text == ""
    assert "retry-after" not in limited.headers  # off by default, as PagerDuty documents none
    time.sleep(0.6)
    assert http.post("/v2/enqueue", json=trigger()).status_code == 202


def test_retry_after_header_when_switched_on(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(rate_limit=1, rate_window=10, retry_after=True)
    http.post("/v2/enqueue", json=trigger())
    limited = http.post("/v2/enqueue", json=trigger())
    assert limited.status_code == 429
    assert 9 <= int(limited.headers["retry-after"]) <= 10


def test_default_rate_limit_is_120_per_minute() -> None:
    options = EmulatorOptions()
    assert (options.rate_limit, options.rate_window, options.retry_after) == (120, 60.0, False)
    limiter = SlidingWindowLimiter(options.rate_limit, options.rate_window)
    assert all(limiter.acquire("k", now=float(i) / 10) is None for i in range(120))
    wait = limiter.acquire("k", now=12.0)
    assert wait == pytest.approx(48.0)  # the first event leaves the window at t=60
    assert limiter.acquire("k", now=60.01) is None


# -- faults -----------------------------------------------------------------------------


def test_scripted_faults_apply_to_the_next_requests_in_order(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"status": 500}, {}, {"status": 429, "retry_after": "3"}, {"drop": True})
    assert http.post("/v2/enqueue", json=trigger()).status_code == 500
    assert http.post("/v2/enqueue", json=trigger()).status_code == 202
    limited = http.post("/v2/enqueue", json=trigger())
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v2/enqueue", json=trigger())
    assert http.post("/v2/enqueue", json=trigger()).status_code == 202
    recorded = [(e["status"], e["fault"]) for e in sandbox_api.events()]
    assert recorded[3] == (None, {"drop": True})
    assert sandbox_api.http.get("/sandbox/faults").json()["injected"] == 3


def test_delay_fault_answers_late(http: httpx.Client, sandbox_api: SandboxClient) -> None:
    sandbox_api.faults({"delay": 0.5})
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v2/enqueue", json=trigger(), timeout=0.1)
    time.sleep(0.6)
    # Like PagerDuty, a slow answer may still have been processed.
    assert len(sandbox_api.incidents()) == 1


def test_probabilistic_faults_are_seeded(http: httpx.Client, sandbox_api: SandboxClient) -> None:
    plan = {"random": [{"probability": 0.5, "fault": {"status": 503}}], "seed": 7}

    def run() -> list[int]:
        sandbox_api.http.post("/sandbox/faults", json=plan).raise_for_status()
        return [http.post("/v2/enqueue", json=trigger()).status_code for _ in range(40)]

    first = run()
    assert first == run()
    assert 8 <= first.count(503) <= 32
    assert set(first) == {202, 503}


def test_invalid_fault_plan_is_refused(sandbox_api: SandboxClient) -> None:
    answer = sandbox_api.http.post("/sandbox/faults", json={"sequence": [{"status": 999}]})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid fault plan"
    assert sandbox_api.http.delete("/sandbox/faults").json()["sequence"] == []


# -- inspection --------------------------------------------------------------------------


def test_events_log_records_every_request_with_masked_keys(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    http.post("/v2/enqueue", json=trigger())
    http.post("/v2/enqueue", content=b"nope")
    events = sandbox_api.events()
    assert [e["status"] for e in events] == [202, 400]
    assert events[0]["body"]["routing_key"] == "…" + ROUTING_KEY[-4:]
    assert events[0]["answer"]["dedup_key"] == "k1"
    assert events[1]["body"] == "nope"
    assert all(e["at"] > 0 for e in events)
    assert ROUTING_KEY not in str(events)
    assert len(sandbox_api.http.get("/sandbox/events", params={"limit": 1}).json()) == 1


def test_reset_forgets_everything(http: httpx.Client, sandbox_api: SandboxClient) -> None:
    sandbox_api.settings(rate_limit=1)
    http.post("/v2/enqueue", json=trigger())
    sandbox_api.faults({"status": 500})
    assert sandbox_api.http.post("/sandbox/reset").status_code == 200
    assert sandbox_api.incidents() == []
    assert sandbox_api.events() == []
    assert http.post("/v2/enqueue", json=trigger()).status_code == 202  # window and faults gone


def test_settings_endpoint_refuses_unknown_settings(sandbox_api: SandboxClient) -> None:
    answer = sandbox_api.http.post("/sandbox/settings", json={"rate_limt": 5})
    assert answer.status_code == 400
    assert "rate_limt" in answer.json()["error"]


def test_html_page_lists_incidents_with_status_counts_and_timeline(
    http: httpx.Client,
) -> None:
    http.post("/v2/enqueue", json=trigger(summary="Replica <lagging>"))
    http.post("/v2/enqueue", json=action("acknowledge", "k1"))
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "Replica &lt;lagging&gt;" in text  # escaped
    assert "acknowledged" in text
    assert "2 events" in text
    assert "trigger</li>" in text
    assert ROUTING_KEY not in text
