"""The PagerDuty emulator over raw HTTP: answers, incident state, strict keys, rate limits,
faults and the inspection endpoints, checked against the reference sheet."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import EmulatorOptions, SandboxServer
from sandbox.ratelimit import SlidingWindowLimiter
from tests.conftest import OTHER_KEY, ROUTING_KEY, SandboxClient, free_port
from worker.exceptions import NotificationDeliveryError
from worker.providers import PagerDutyProvider
from worker.providers.base import Notification

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))
REPO = Path(__file__).resolve().parent.parent


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


def test_an_empty_strict_key_list_turns_strict_mode_off(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.settings(strict_keys=[ROUTING_KEY])
    assert http.post("/v2/enqueue", json=trigger(key=OTHER_KEY)).status_code == 400
    assert sandbox_api.settings(strict_keys=[])["strict_keys"] is None
    assert http.post("/v2/enqueue", json=trigger(key=OTHER_KEY)).status_code == 202
    sandbox_api.settings(strict_keys=[ROUTING_KEY])
    sandbox_api.settings(strict_keys=None)
    assert http.post("/v2/enqueue", json=trigger(key=OTHER_KEY)).status_code == 202


@pytest.mark.parametrize("value", ["R0UT1NGKEY0000000000000000000001", 5, {"k": 1}, [1], True])
def test_strict_keys_other_than_a_list_or_null_are_refused_by_name(
    http: httpx.Client, sandbox_api: SandboxClient, value: Any
) -> None:
    sandbox_api.settings(strict_keys=[ROUTING_KEY])
    answer = sandbox_api.http.post("/sandbox/settings", json={"strict_keys": value})
    assert answer.status_code == 400
    assert "strict_keys must be a list of routing keys" in answer.json()["error"]
    assert sandbox_api.http.get("/sandbox/settings").json()["strict_keys"] == [
        "…" + ROUTING_KEY[-4:]
    ]
    assert http.post("/v2/enqueue", json=trigger(key=OTHER_KEY)).status_code == 400


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


def test_drop_with_accept_applies_the_event_and_loses_only_the_answer(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"drop": True, "accept": True})
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v2/enqueue", json=trigger(dedup_key="taken"))
    assert [i["dedup_key"] for i in sandbox_api.incidents()] == ["taken"]
    assert [(e["status"], e["fault"]) for e in sandbox_api.events()] == [
        (202, {"drop": True, "accept": True})
    ]


def test_injected_503_answers_service_unavailable_in_pagerdutys_shape(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"status": 503})
    answer = http.post("/v2/enqueue", json=trigger())
    assert (answer.status_code, answer.reason_phrase) == (503, "Service Unavailable")
    assert answer.json() == {"status": "error", "message": "Service Unavailable"}


def test_injected_400_is_pagerdutys_invalid_event_saying_its_reason_once(
    http: httpx.Client, sandbox_api: SandboxClient
) -> None:
    sandbox_api.faults({"status": 400})
    answer = http.post("/v2/enqueue", json=trigger())
    assert answer.status_code == 400
    assert answer.json() == {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": ["Fault injected by the sandbox"],
    }
    assert sandbox_api.events()[-1]["answer"] == answer.json()


def test_injected_errors_read_once_in_our_providers_messages(
    sandbox: SandboxServer, sandbox_api: SandboxClient
) -> None:
    provider = PagerDutyProvider(ROUTING_KEY, api_url=sandbox.api_url)
    note = Notification(recipient="db-1", subject="Disk full", idempotency_id="fault-1")
    sandbox_api.faults({"status": 400}, {"status": 503})
    with pytest.raises(NotificationDeliveryError) as rejected:
        provider.trigger(note)
    assert str(rejected.value) == (
        "PagerDuty rejected event: Event object is invalid: Fault injected by the sandbox"
    )
    with pytest.raises(NotificationDeliveryError) as unavailable:
        provider.trigger(note)
    assert str(unavailable.value) == "PagerDuty answered HTTP 503: Service Unavailable"


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
    lone = sandbox_api.http.post("/sandbox/faults", json={"sequence": [{"accept": True}]})
    assert lone.status_code == 400
    assert "accept goes with drop" in lone.text


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
    wrong_values: list[tuple[dict[str, Any], str]] = [
        ({"rate_limit": "ten"}, "rate_limit must be a whole number, 0 for no limit, not 'ten'"),
        ({"rate_window": 0}, "rate_window must be a number of seconds above 0, not 0"),
        ({"rate_window": float("inf")}, "rate_window must be a number of seconds above 0, not inf"),
        ({"retry_after": "yes"}, "retry_after must be true or false, not 'yes'"),
    ]
    for wrong, says in wrong_values:
        # With a valid change beside it: nothing of the request is applied.
        answer = sandbox_api.http.post(  # as Python writes JSON: Infinity allowed
            "/sandbox/settings",
            content=json.dumps({"strict_keys": ["k"], **wrong}),
            headers={"Content-Type": "application/json"},
        )
        assert (answer.status_code, answer.json()["error"]) == (400, f"invalid setting: {says}")
    assert sandbox_api.http.get("/sandbox/settings").json()["strict_keys"] is None


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


# -- gds-notify sandbox and make, run as a user runs them ---------------------------------


@pytest.mark.parametrize(
    ("taken", "service"), [("--port", "PagerDuty emulator"), ("--smtp-port", "SMTP sink")]
)
def test_a_taken_port_is_the_one_line_printed_before_any_banner(taken: str, service: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"--port": free_port(), "--smtp-port": free_port(), taken: port}
        done = subprocess.run(
            [GDS_NOTIFY, "sandbox", *(str(a) for pair in ports.items() for a in pair)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1  # the operation failed (README, Command line)
    assert done.stderr.splitlines() == [
        f"Error: {service}: port {port} on 127.0.0.1 is already in use; pick another with {taken}"
    ]
    assert done.stdout == ""  # no banner announcing a sandbox that never started


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makes_python_probe_stays_quiet_past_pyenv_shims(tmp_path: Path) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.13", "python3.12"):  # as pyenv's shims do for versions not installed
        shim = shims / name
        shim.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MAKELEVEL")}
    # Then this venv, so that a Python 3.11+ is found whatever else the machine has.
    env["PATH"] = os.pathsep.join([str(shims), str(Path(sys.executable).parent), env["PATH"]])
    done = subprocess.run(
        ["make", "-s", "-f", str(REPO / "Makefile"), "--eval", "probe: ; @echo $(PYTHON)", "probe"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "pyenv" not in done.stdout + done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() in ("python3.11", "python3")  # the shims were passed over
