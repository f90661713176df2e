"""Heartbeats over HTTP, as Medic's and Healthchecks' users send them, with a real Redis,
an in-thread worker, ``celery -A worker beat`` and the sandbox: Medic's documented curl
examples (their URL changed, nothing else), crontab-style ping URLs, runs that take too
long, and the limits that keep a flood of pings harmless."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from config.api_tokens import token_hash
from sandbox import SandboxServer
from tests.api_server import (
    HEARTBEAT_TOKEN,
    NOTIFY_TOKEN,
    PING_ONLY_KEY,
    TEAM_PING_KEY,
    TOKENS,
    ApiServer,
    serve,
)
from tests.conftest import SandboxClient, wait_for
from tests.heartbeat_helpers import WriteCatalogue, service
from tests.processes import beat as beat_process
from worker.engine import keys
from worker.engine.heartbeats.checker import last_check, read_states
from worker.engine.heartbeats.evaluation import Observation, is_bad
from worker.engine.runtime import engine
from worker.exceptions import NotificationConfigError

#: Medic's own documented example ("Register and Monitor a Service"), as written.
MEDIC_EXAMPLE = """
# 1. Register the service
curl -X POST http://localhost:5000/service \\
  -H "Content-Type: application/json" \\
  -d '{
    "heartbeat_name": "my-app-heartbeat",
    "service_name": "my-app",
    "alert_interval": 5,
    "threshold": 1,
    "team": "platform",
    "priority": "p2"
  }'

# 2. Send heartbeats (call every minute)
curl -X POST http://localhost:5000/heartbeat \\
  -H "Content-Type: application/json" \\
  -d '{
    "heartbeat_name": "my-app-heartbeat",
    "status": "UP"
  }'

# 3. Check service status
curl http://localhost:5000/service/my-app-heartbeat

# 4. Mute during maintenance
curl -X POST http://localhost:5000/service/my-app-heartbeat \\
  -H "Content-Type: application/json" \\
  -d '{"muted": 1}'

# 5. Unmute after maintenance
curl -X POST http://localhost:5000/service/my-app-heartbeat \\
  -H "Content-Type: application/json" \\
  -d '{"muted": 0}'
"""


JSON = {"content-type": "application/json"}


@pytest.fixture
def pages(service_env: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(service_env)
    yield client
    client.close()


@pytest.fixture
def beat(catalogue: WriteCatalogue, tmp_path: Path) -> Iterator[None]:
    """``celery -A worker beat`` scheduling the check every 0.3 s (the in-thread worker of
    the test runs it)."""
    with beat_process(tmp_path, HEARTBEAT_CHECK_INTERVAL="0.3"):
        yield


@pytest.fixture
def hb_api(catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    catalogue(service("billing-api", window=60) + service("etl", window=60, team="data"))
    yield from serve(monkeypatch)


def medic_calls(api: ApiServer) -> list[tuple[str, dict[str, Any]]]:
    """Medic's example run by bash as written, against ``/medic/{key}`` instead of Medic;
    each call's status and answer."""
    script = MEDIC_EXAMPLE.replace("http://localhost:5000", f"{api.url}/medic/{HEARTBEAT_TOKEN}")
    commands = [
        " ".join(part.strip().rstrip("\\") for part in chunk.strip().splitlines())
        for chunk in script.split("\n\n# ")
        if "curl" in chunk
    ]
    out = []
    for command in commands:
        curl = command[command.index("curl") :]
        done = subprocess.run(
            ["bash", "-c", curl + " -sS -w '\\n%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        answer, _, status = done.stdout.rpartition("\n")
        out.append((status, json.loads(answer)))
    return out


def test_medics_documented_examples_run_as_written_at_a_new_url(
    hb_api: ApiServer, celery_worker: Any
) -> None:
    register, heartbeat, status, mute, unmute = medic_calls(hb_api)
    assert register == (
        "201",
        {"success": True, "message": "Heartbeat successfully registered.", "results": ""},
    )
    assert heartbeat == (
        "201",
        {"success": True, "message": "Heartbeat Posted Successfully.", "results": ""},
    )
    assert status[0] == "200"
    [shown] = status[1]["results"]
    assert shown["heartbeat_name"] == "my-app-heartbeat"
    assert (shown["service_name"], shown["alert_interval"], shown["priority"]) == (
        "my-app",
        5,
        "p2",
    )
    assert (shown["team"], shown["threshold"], shown["defined_in"]) == ("platform", 1, "api")
    assert mute == (
        "200",
        {"success": True, "message": "Successfully posted update", "results": ""},
    )
    assert unmute[0] == "200"
    assert engine().service("my-app-heartbeat").muted is False  # type: ignore[union-attr]
    # Registering again is Medic's 200; the heartbeat is in the log and GET /heartbeat.
    again, *_ = medic_calls(hb_api)
    assert again == (
        "200",
        {"success": True, "message": "Heartbeat is already registered.", "results": ""},
    )
    with hb_api.client(HEARTBEAT_TOKEN) as http:
        beats = http.get("/heartbeat", params={"heartbeat_name": "my-app-heartbeat"}).json()
    assert [b["status"] for b in beats["results"]] == ["UP", "UP"]
    assert beats["results"][0]["team"] == "platform"


def test_medic_refusals_in_medics_shape(hb_api: ApiServer) -> None:
    with hb_api.client(HEARTBEAT_TOKEN) as http:
        unknown = http.post("/heartbeat", json={"heartbeat_name": "ghost", "status": "UP"})
        bad = http.post("/heartbeat", json={"heartbeat_name": "etl", "status": "SLEEPY"})
        missing = http.post("/service", json={"heartbeat_name": "x"})
        bad_name = http.post(
            "/service",
            json={"heartbeat_name": "no spaces", "service_name": "s", "alert_interval": 1},
        )
        from_file = http.post("/service/etl", json={"muted": 1})
        service = {"heartbeat_name": "flagged", "service_name": "F", "alert_interval": 5}
        assert http.post("/service", json=service).status_code == 201
        bad_flags = http.post("/service/flagged", json={"muted": 2, "active": "maybe"})
        good_flags = http.post("/service/flagged", json={"muted": True, "active": "0"})
        file_again = http.post(
            "/service", json={"heartbeat_name": "etl", "service_name": "s", "alert_interval": 1}
        )
        # What FastAPI could not read, and bodies Medic's callers send without the header.
        not_json = http.post("/heartbeat", content=b"{oops", headers=JSON)
        latin1 = http.post(
            "/heartbeat", content=b'{"heartbeat_name": "caf\xe9", "status": "UP"}', headers=JSON
        )
        text = http.post("/heartbeat", content=b"alive", headers={"content-type": "text/plain"})
        curl_d = http.post(  # `curl -d '{...}'` sends it as a form
            "/heartbeat",
            content=b'{"heartbeat_name": "etl", "status": "DOWN"}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        deep = http.post("/heartbeat", content=b"[" * 100_000 + b"]" * 100_000)
        huge = http.post("/heartbeat", content=b'{"n": ' + b"9" * 5000 + b"}", headers=JSON)
        many = http.get("/heartbeat", params={"maxCount": 500})
        wrong_count = http.get("/heartbeat", params={"maxCount": "lots"})
    assert httpx.get(ping_url(hb_api, "etl", "fail")).text == "OK"
    assert httpx.get(ping_url(hb_api, "etl", "3")).text == "OK"
    with hb_api.client(HEARTBEAT_TOKEN) as http:
        statuses = http.get("/heartbeat", params={"heartbeat_name": "etl"}).json()["results"]
    with hb_api.client(NOTIFY_TOKEN) as http:
        no_scope = http.post("/heartbeat", json={"heartbeat_name": "etl", "status": "UP"})
        no_scope_unread = http.post("/heartbeat", content=b"{oops", headers=JSON)
    # What cannot be read is answered only to a caller with a key: others get the refusal.
    anonymous_unread = httpx.post(f"{hb_api.url}/heartbeat", content=b"{oops", headers=JSON)
    wrong_key_unread = httpx.post(
        f"{hb_api.url}/medic/gdsn_nobody/heartbeat", content=b"{oops", headers=JSON
    )
    anonymous = httpx.post(f"{hb_api.url}/heartbeat", json={"heartbeat_name": "etl"})
    assert (unknown.status_code, unknown.json()["success"]) == (404, False)
    assert bad.status_code == 400
    assert bad.json()["message"] == "status: must be UP, DOWN or DEGRADED"
    assert missing.status_code == 400
    assert "service_name: Field required" in missing.json()["message"]
    assert "alert_interval: Field required" in missing.json()["message"]
    assert bad_name.status_code == 400
    assert bad_name.json()["message"].startswith("heartbeat_name:")
    assert from_file.status_code == 409
    # Medic's 0/1 flags: one message a field, not one for each type the field could be.
    assert (bad_flags.status_code, bad_flags.json()["message"]) == (
        400,
        "active: must be 0 or 1 (or false or true); muted: must be 0 or 1 (or false or true)",
    )
    assert good_flags.status_code == 200
    flagged = engine().service("flagged")
    assert flagged is not None
    assert (flagged.muted, flagged.active) == (True, False)
    assert "HEARTBEAT_SERVICES_FILE" in from_file.json()["message"]
    assert file_again.json()["message"] == "Heartbeat is already registered."
    assert latin1.json()["message"] == "body: not valid JSON (not UTF-8)"
    for refusal in (not_json, text, wrong_count, latin1):
        assert refusal.status_code == 400, refusal.text
        assert refusal.json()["success"] is False
    assert not_json.json()["message"].startswith("body: not valid JSON (Expecting property")
    assert text.json()["message"] == (
        "body: not valid JSON (Expecting value: line 1 column 1 (char 0)): send a JSON "
        "object, with Content-Type: application/json"
    )
    # Nested past what the parser builds, or a number of thousands of digits: a 500 before.
    for unparsable, why in ((deep, "nested too deeply"), (huge, "integer string conversion")):
        assert unparsable.status_code == 400, unparsable.text
        assert why in unparsable.json()["message"]
    assert wrong_count.json()["message"].startswith("maxCount: Input should be a valid integer")
    assert (curl_d.status_code, many.status_code) == (201, 200)
    assert [b["status"] for b in statuses] == ["DOWN", "DOWN", "DOWN"]  # exit 3, /fail, DOWN
    assert no_scope.status_code == no_scope_unread.status_code == 403
    # Which scope to make a token with, for heartbeats and for services alike.
    assert no_scope.json()["error"].endswith(
        "does not have the 'ping' scope: Medic's API takes the 'ping' scope to report "
        "heartbeats, the 'heartbeat' scope to read or change services too"
    )
    assert anonymous.status_code == anonymous_unread.status_code == 401
    assert wrong_key_unread.status_code == 401
    assert "error" in anonymous_unread.json()  # the API's shape, as every token refusal
    assert engine().heartbeats.refused()["unknown_slug"] == 1
    assert not engine().redis.exists("gds:hb:log:ghost")  # refused, never stored


def test_a_silent_registered_service_is_paged_and_resolved_like_a_file_entry(
    hb_api: ApiServer, celery_worker: Any, beat: None, pages: SandboxClient
) -> None:
    with hb_api.client(HEARTBEAT_TOKEN) as http:
        made = http.post(
            "/service",
            json={
                "heartbeat_name": "nightly-export",
                "service_name": "Nightly export",
                "environment": "staging",
                "alert_interval": 0.01,
                "team": "dba",
                "priority": "p1",
                "runbook": "https://runbooks.example/export",
            },
        )
        assert made.status_code == 201
        [incident] = wait_for(lambda: pages.incidents(), timeout=30)
        assert incident["dedup_key"] == "medic-heartbeat-staging-nightly-export"
        assert incident["summary"] == "Heartbeat failure: Nightly export"
        assert incident["severity"] == "critical"
        alerts = http.get("/alerts", params={"active": 1}).json()["results"]
        assert [a["external_reference_id"] for a in alerts] == [incident["dedup_key"]]
        listed = CliRunner().invoke(main, ["heartbeats"]).output
        assert "staging-nightly-export" in listed
        assert "registered over the API" in listed
        for _ in range(3):
            posted = http.post(
                "/heartbeat", json={"heartbeat_name": "staging-nightly-export", "status": "UP"}
            )
            assert posted.status_code == 201
            time.sleep(0.2)
        wait_for(lambda: pages.incidents()[0]["status"] == "resolved", timeout=30)
        assert http.get("/alerts", params={"active": 1}).json()["results"] == []
    [event] = [e for e in pages.events() if e["body"]["event_action"] == "trigger"]
    assert event["body"]["links"] == [
        {"href": "https://runbooks.example/export", "text": "Runbook: Nightly export"}
    ]


def ping_url(api: ApiServer, slug: str, suffix: str = "", key: str = HEARTBEAT_TOKEN) -> str:
    return f"{api.url}/ping/{key}/{slug}" + (f"/{suffix}" if suffix else "")


def crontab_ping(url: str) -> subprocess.CompletedProcess[str]:
    """The line a crontab runs after its job, as Healthchecks documents it."""
    return subprocess.run(
        shlex.split(f"curl -fsS -m 10 --retry 3 -o /dev/null {url}"),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_crontab_ping_keeps_a_service_up_and_fail_pages_at_once(
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker: Any,
    pages: SandboxClient,
    tmp_path: Path,
) -> None:
    catalogue(
        service("backup", window=1.5, extra="page_output = true") + service("archive", window=60)
    )
    for api in serve(monkeypatch, HEARTBEAT_CHECK_INTERVAL="30"):  # no checks but early ones
        from worker.engine.heartbeats.paging import run_check

        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert crontab_ping(ping_url(api, "backup")).returncode == 0
            run_check(engine())
            time.sleep(0.25)
        assert read_states(engine().redis)["backup"].status == "up"
        assert pages.incidents() == []
        checked = last_check(engine().redis)
        # The job's exit status and output, as Healthchecks' crontab example sends them:
        # `m=$(backup 2>&1); curl ... --data-raw "$m" URL/$?`.
        output = tmp_path / "output"
        lines = ["\x1b]0;pwned\x07disk full", *(f"copied {i} of 40 tables" for i in range(30))]
        output.write_text("\n".join(lines))
        failed = crontab_ping(f"--data-binary @{output} {ping_url(api, 'backup', '3')}")
        assert failed.returncode == 0, failed.stderr
        # A failure asks for a check at once: beat is not running, the worker runs it.
        [incident] = wait_for(lambda: pages.incidents(), timeout=10)
        assert incident["dedup_key"] == "medic-heartbeat-backup"
        # Without page_output, what the job wrote stays here: it may hold secrets.
        archive = crontab_ping(f"--data-binary @{output} {ping_url(api, 'archive', '3')}")
        assert archive.returncode == 0, archive.stderr
        archived = wait_for(lambda: pages.incidents(dedup_key="medic-heartbeat-archive"))
        kept_here = archived[0]["payload"]["payload"]["custom_details"]
        assert kept_here["reported_via"] == "exit 3"
        assert "reported_output" not in kept_here
        assert last_check(engine().redis) != checked
        details = incident["payload"]["payload"]["custom_details"]
        assert details["reason"] == "the service reported status fail"
        # What the job said, so the responder need not look it up first: its first lines.
        assert details["reported_via"] == "exit 3"
        assert details["reported_output"].splitlines() == lines[:20]
    # Shown to an operator's terminal, what the job wrote cannot drive it.
    log = CliRunner().invoke(main, ["heartbeats", "--log", "backup"]).output
    assert "\\x1b]0;pwned\\x07disk full" in log
    assert "\x1b" not in log


def test_a_failure_then_a_success_before_the_check_pages_once_whichever_way_it_came(
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker: Any,
    pages: SandboxClient,
) -> None:
    """``/fail``, an exit status or Medic's ``DOWN``, then a success before the check the
    failure asked for has run (still queued): paged all the same, once, saying when the
    service reported success since; the next check resolves it. (The check read only the
    newest heartbeat: these were never paged.)"""
    from worker.engine.heartbeats.paging import run_check

    catalogue(
        service("backup", window=60, extra="page_output = true")
        + service("etl", window=60)
        + service("medic-app", window=60)
    )
    for api in serve(monkeypatch, HEARTBEAT_CHECK_INTERVAL="30"):  # no checks but ours
        run_check(engine())
        # The early check a failure asks for is still queued: none is asked for now.
        engine().redis.set(keys.HEARTBEAT_CHECK_SOON, "1", px=60_000)
        with httpx.Client() as http:
            failed = http.post(ping_url(api, "backup", "fail"), content="disk full\nrolled back")
            assert failed.text == "OK"
            assert http.get(ping_url(api, "backup")).text == "OK"
            assert http.get(ping_url(api, "etl", "3")).text == "OK"
            assert http.get(ping_url(api, "etl", "0")).text == "OK"
        with api.client(HEARTBEAT_TOKEN) as http:
            for status in ("DOWN", "UP"):
                beat = {"heartbeat_name": "medic-app", "status": status}
                assert http.post("/heartbeat", json=beat).status_code == 201
        assert {s.status for s in read_states(engine().redis).values()} == {"new"}
        run_check(engine())
        incidents = wait_for(lambda: pages.incidents(status="triggered")[2:] and pages.incidents())
        details = {
            i["dedup_key"].removeprefix("medic-heartbeat-"): i["payload"]["payload"][
                "custom_details"
            ]
            for i in incidents
        }
        assert {slug: d["reported_via"] for slug, d in details.items()} == {
            "backup": "/fail",
            "etl": "exit 3",
            "medic-app": "DOWN",
        }
        assert all(d["recovered_at"] >= d["reported_at"] for d in details.values())
        assert details["backup"]["reported_output"] == "disk full\nrolled back"
        assert "reported_output" not in details["etl"]
        for _ in range(3):  # the next check resolves them; the ones after it add nothing
            run_check(engine())
        wait_for(lambda: len(pages.incidents(status="resolved")) == 3)
        time.sleep(0.3)
    sent = sorted((e["body"]["dedup_key"], e["body"]["event_action"]) for e in pages.events())
    assert sent == sorted(
        (f"medic-heartbeat-{slug}", action)
        for slug in ("backup", "etl", "medic-app")
        for action in ("trigger", "resolve")
    )


def test_a_run_that_started_and_did_not_finish_in_time_pages_and_its_finish_resolves(
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker: Any,
    beat: None,
    pages: SandboxClient,
) -> None:
    catalogue(service("etl", window=60, extra="max_duration = 1"))
    for api in serve(monkeypatch):
        with httpx.Client() as http:
            assert http.get(ping_url(api, "etl")).text == "OK"
            started = http.post(ping_url(api, "etl", "start"), params={"rid": "run-7"})
            assert started.text == "OK"
            [incident] = wait_for(lambda: pages.incidents(), timeout=30)
            assert "ran too long" in str(incident["payload"])
            done = http.post(ping_url(api, "etl"), params={"rid": "run-7"}, content="rows: 1203")
            assert done.status_code == 200
        wait_for(lambda: pages.incidents()[0]["status"] == "resolved", timeout=30)
    log = CliRunner().invoke(main, ["heartbeats", "--log", "etl"]).output
    assert "rid run-7" in log
    assert "rows: 1203" in log


def test_ping_urls_answer_as_healthchecks_does(hb_api: ApiServer, pages: SandboxClient) -> None:
    with httpx.Client() as http:
        ok = http.get(ping_url(hb_api, "billing-api"))
        head = http.head(ping_url(hb_api, "billing-api"))
        post = http.post(ping_url(hb_api, "billing-api", "log"), content="disk at 81%")
        exit_0 = http.get(ping_url(hb_api, "billing-api", "0"))
        exit_3 = http.get(ping_url(hb_api, "etl", "3"))
        bad_exit = http.get(ping_url(hb_api, "billing-api", "256"))
        leading_zero = http.get(ping_url(hb_api, "etl", "0255"))  # Healthchecks reads 255
        many_digits = http.get(ping_url(hb_api, "etl", "9" * 500))
        # Control characters are kept JSON-escaped, six bytes each: the log is bounded in
        # bytes too (50 such pings made 3 MB for one service).
        controls = http.post(ping_url(hb_api, "etl", "log"), content="\x01" * 20_000)
        accents = http.post(ping_url(hb_api, "etl", "log"), content="é" * 9_000)  # 18 kB
        # Digits to str.isdigit, not to Healthchecks: superscript two, Arabic-Indic three.
        odd_digits = [http.get(ping_url(hb_api, "billing-api", d)) for d in ("\u00b2", "\u0663")]
        unknown = http.get(ping_url(hb_api, "ghost"))
        wrong_key = http.get(ping_url(hb_api, "billing-api", key="gdsn_nobody"))
        other_team = http.get(ping_url(hb_api, "etl", key=TEAM_PING_KEY))
        own_team = http.get(ping_url(hb_api, "billing-api", key=TEAM_PING_KEY))
        huge = http.post(ping_url(hb_api, "billing-api"), content="x" * 20_000)
    assert (ok.status_code, ok.text, ok.headers["content-type"]) == (
        200,
        "OK",
        "text/plain; charset=utf-8",
    )
    assert ok.headers["Access-Control-Allow-Origin"] == "*"
    assert (head.status_code, head.text) == (200, "")
    assert post.text == exit_0.text == exit_3.text == own_team.text == "OK"
    assert bad_exit.status_code == many_digits.status_code == 400
    assert leading_zero.text == "OK"
    assert controls.text == "OK"
    kept = engine().redis.lindex(keys.heartbeat_log("etl"), 0)
    assert kept is not None
    assert len(kept) < 20_500
    assert accents.text == "OK"
    assert engine().heartbeats.log("etl")[0]["body"] == "é" * 9_000  # UTF-8 as kept: whole
    assert engine().heartbeats.log("etl")[1]["body"].endswith(" more]")
    assert engine().heartbeats.log("etl")[2]["via"] == "exit 255"
    assert [(a.status_code, a.text) for a in odd_digits] == [(400, "invalid url format")] * 2
    assert [(a.status_code, a.text) for a in (unknown, wrong_key, other_team)] == [
        (404, "not found")
    ] * 3
    assert huge.status_code == 200
    log = engine().heartbeats.log("billing-api")
    kinds = [(e["kind"], e.get("via")) for e in log]
    assert kinds[:5] == [
        ("up", None),
        ("up", None),
        ("up", "exit 0"),
        ("log", "/log"),
        ("up", None),
    ]
    assert log[0]["body"].startswith("x" * 10_000)
    assert log[0]["body"].endswith("[cut: 10000 more]")
    assert log[3]["body"] == "disk at 81%"
    assert engine().heartbeats.last()["etl"].status == "fail"
    assert not engine().redis.exists("gds:hb:log:ghost")


UUID = "5cca24d4-9979-4a51-a68f-e6493e6e10bf"


def test_healthchecks_uuid_urls_ping_the_service_the_file_gives_that_uuid(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crontab line switched from Healthchecks by its host alone: `hc-ping.com/<uuid>`
    became `HOST/ping/<uuid>`, the UUID its credential as it was."""
    catalogue(
        service("backup", window=60, extra=f'ping_uuid = "{UUID.upper()}"')
        + service("etl", window=60)
    )
    # A deployment whose ping key happens to be a UUID (made with uuidgen) keeps its URLs.
    uuid_key = "0b7e9a52-1c3f-4d2e-9a8b-7c6d5e4f3a2b"
    uuidgen = {"name": "uuidgen", "sha256": token_hash(uuid_key), "scopes": ["ping"]}
    keys_with_a_uuid = [*TOKENS, uuidgen]
    for api in serve(monkeypatch, API_TOKENS=json.dumps(keys_with_a_uuid)):
        done = crontab_ping(f"{api.url}/ping/{UUID}")
        with httpx.Client() as http:
            started = http.get(f"{api.url}/ping/{UUID}/start", params={"rid": "r1"})
            failed = http.post(f"{api.url}/ping/{UUID}/1", content="tar: disk full")
            unknown = http.get(f"{api.url}/ping/{UUID[:-1]}0")
            too_deep = http.get(f"{api.url}/ping/{UUID}/fail/now")
            bad_suffix = http.get(f"{api.url}/ping/{UUID}/fial")
            no_slug = http.get(f"{api.url}/ping/{HEARTBEAT_TOKEN}")
            as_key = http.get(f"{api.url}/ping/{uuid_key}/etl")
    assert done.returncode == 0, done.stderr
    assert (started.status_code, started.text) == (200, "OK")
    assert (failed.status_code, failed.text) == (200, "OK")
    for answer in (unknown, too_deep, no_slug):
        assert (answer.status_code, answer.text) == (404, "not found")
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert (bad_suffix.status_code, bad_suffix.text) == (400, "invalid url format")
    assert (as_key.status_code, as_key.text) == (200, "OK")
    log = engine().heartbeats.log("backup")
    assert [(e["kind"], e.get("via")) for e in log] == [
        ("fail", "exit 1"),
        ("start", "/start"),
        ("up", None),
    ]
    assert log[0]["body"] == "tar: disk full"
    assert [e["kind"] for e in engine().heartbeats.log("etl")] == ["up"]  # by the key
    # One UUID names one service.
    catalogue(
        service("backup", window=60, extra=f'ping_uuid = "{UUID}"')
        + service("etl", window=60, extra=f'ping_uuid = "{UUID}"')
    )
    from config.catalogue import CatalogueFile, load_catalogue

    with pytest.raises(NotificationConfigError, match=f"services.etl.ping_uuid: {UUID} is"):
        load_catalogue(os.environ["HEARTBEAT_SERVICES_FILE"])
    # Started on such a file, an API watches both by their slugs, neither by the UUID.
    salvaged = CatalogueFile(os.environ["HEARTBEAT_SERVICES_FILE"], salvage=True)
    assert salvaged.last_error is not None
    assert sorted(salvaged.current().services) == ["backup", "etl"]
    assert salvaged.current().by_ping_uuid(UUID) is None


def test_a_ping_key_reports_heartbeats_and_cannot_silence_the_monitoring(
    hb_api: ApiServer,
) -> None:
    """The key in a crontab line ends up in shell histories and CI logs: with the `ping`
    scope it reports, and cannot mute or deactivate what it reports to."""
    medic = f"{hb_api.url}/medic/{PING_ONLY_KEY}"
    with httpx.Client() as http:
        pinged = http.get(ping_url(hb_api, "billing-api", key=PING_ONLY_KEY))
        beat = http.post(f"{medic}/heartbeat", json={"heartbeat_name": "etl", "status": "UP"})
        muted = http.post(f"{medic}/service/etl", json={"muted": 1})
        listed = http.get(f"{medic}/service")
        registered = http.post(
            f"{medic}/service",
            json={"heartbeat_name": "sneaky", "service_name": "s", "alert_interval": 1},
        )
        created = http.get(ping_url(hb_api, "sneaky", key=PING_ONLY_KEY) + "?create=1")
        read = [http.get(f"{medic}/{path}") for path in ("heartbeat", "alerts", "service/etl")]
        by_bearer = http.get(
            f"{hb_api.url}/service", headers={"Authorization": f"Bearer {PING_ONLY_KEY}"}
        )
    assert (pinged.status_code, pinged.text) == (200, "OK")
    assert beat.status_code == 201
    assert (created.status_code, created.text) == (
        403,
        "forbidden: creating a check takes the heartbeat scope",
    )
    for refused in (muted, listed, registered, *read, by_bearer):
        assert refused.status_code == 403
        assert (
            "reading or changing services takes the 'heartbeat' scope" in (refused.json()["error"])
        )
    assert [e["kind"] for e in engine().heartbeats.log("etl")] == ["up"]
    assert engine().service("sneaky") is None


def test_a_fail_ping_with_a_long_log_or_a_trailing_slash_is_kept_as_curl_sends_it(
    hb_api: ApiServer, tmp_path: Path
) -> None:
    """curl without -L takes a redirect for success and does not retry a 413: a slash at
    the end was a 307 and a log over the body limit a 413, each a failure never seen."""
    log = tmp_path / "backup.log"
    log.write_text("row failed\n" * 110_000)  # 1.2 MB, past API_MAX_BODY_BYTES
    for url, body in [
        (ping_url(hb_api, "billing-api", "fail/"), []),
        (ping_url(hb_api, "etl", "fail"), ["--data-binary", f"@{log}"]),
        (ping_url(hb_api, "billing-api") + "/", []),
    ]:
        sent = subprocess.run(
            ["curl", "-fsS", "-m", "10", "--retry", "3", "-w", "%{http_code}", *body, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (sent.returncode, sent.stdout, sent.stderr) == (0, "OK200", ""), url
    billing, etl = engine().heartbeats.log("billing-api"), engine().heartbeats.log("etl")
    assert [e["kind"] for e in billing[:2]] == ["up", "fail"]
    assert etl[0]["kind"] == "fail"
    assert etl[0]["body"].startswith("row failed\nrow failed\n")
    assert "[cut: " in etl[0]["body"]
    with httpx.Client(base_url=hb_api.url) as http:  # a slash at the end, anywhere
        answer = http.get("/healthz/")
        assert (answer.status_code, answer.json()["status"]) == (200, "ok")


def http_answer(sock: socket.socket) -> str:
    """An HTTP answer read whole from ``sock``: its head, and its body to its
    Content-Length (a loaded machine may send them in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while found and len(body) < int(found.group(1)) and (chunk := sock.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_long_log_on_a_slow_link_is_cut_without_waiting_for_the_rest(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is past the bound is never read: waiting for it ran into the read timeout (a
    408, which curl's --retry repeats into the same 408) and the failure was lost."""
    catalogue(service("backup", window=60))
    for api in serve(monkeypatch, API_MAX_BODY_BYTES="2048", API_READ_TIMEOUT="30"):
        with socket.create_connection(("127.0.0.1", api.port), timeout=20) as sock:
            sock.sendall(
                (
                    f"POST /ping/{HEARTBEAT_TOKEN}/backup/fail HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
                ).encode()
                + b"x" * 3000  # past the bound; the other 97,000 bytes never come
            )
            answer = http_answer(sock)
        assert answer.startswith("HTTP/1.1 200"), answer
        assert answer.endswith("OK")
        [failed] = engine().heartbeats.log("backup")[:1]
        assert failed["kind"] == "fail"
        assert failed["body"] == "x" * 2048


def test_a_log_still_trickling_in_at_the_read_timeout_is_cut_there_and_recorded(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ping is its URL: a /fail whose body had not all come by API_READ_TIMEOUT was a
    408, and the failure was never recorded. It is recorded with what came."""
    catalogue(service("backup", window=60))
    for api in serve(monkeypatch, API_READ_TIMEOUT="1"):
        with socket.create_connection(("127.0.0.1", api.port), timeout=20) as sock:
            sock.sendall(
                (
                    f"POST /ping/{HEARTBEAT_TOKEN}/backup/fail HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: text/plain\r\nContent-Length: 5000\r\n\r\n"
                ).encode()
                + b"disk full\n"  # the other 4,990 bytes never come
            )
            answer = http_answer(sock)
        assert answer.startswith("HTTP/1.1 200"), answer
        assert answer.endswith("OK")
        [failed] = engine().heartbeats.log("backup")[:1]
        assert (failed["kind"], failed["body"]) == ("fail", "disk full\n")


def test_a_ping_whose_client_leaves_mid_body_is_not_a_server_error(
    hb_api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone could make the API answer 500, with a traceback each, and fire the API-errors
    alert: a ping POST reads its body before its key is checked, and the client leaving
    mid-body went uncaught. It is the client's doing: a 400, and no traceback."""
    from tests.test_metrics import scrape

    def counted(code: str) -> float:
        key = ("gds_notify_http_responses_total", (("code", code), ("route", "/ping/{key}/{slug}")))
        return scrape(f"{hb_api.url}/metrics").get(key, 0.0)

    errors_before, refused_before = counted("500"), counted("400")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", hb_api.port), timeout=10) as sock:
            sock.sendall(
                b"POST /ping/anything/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                + b"y" * 10
            )
    wait_for(lambda: counted("400") - refused_before == 3)
    assert counted("500") == errors_before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_flood_of_pings_is_limited_per_key_and_starves_nobody(
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker: Any,
    beat: None,
) -> None:
    catalogue(service("noisy", window=60) + service("quiet", window=60, team="data"))
    for api in serve(monkeypatch, PING_RATE_LIMIT="20/minute"):
        with httpx.Client() as flood, httpx.Client() as other:
            answers = [flood.get(ping_url(api, "noisy", key=TEAM_PING_KEY)) for _ in range(60)]
            # Meanwhile another key's pings go through, and the checker keeps checking.
            assert other.get(ping_url(api, "quiet")).text == "OK"
        limited = [a for a in answers if a.status_code == 429]
        assert len([a for a in answers if a.status_code == 200]) == 20
        assert len(limited) == 40
        assert limited[0].text == "rate limited"
        assert 1 <= int(limited[0].headers["Retry-After"]) <= 61
        checked = last_check(engine().redis)
        wait_for(lambda before=checked: last_check(engine().redis) != before, timeout=10)
        assert len(engine().heartbeats.log("noisy")) == 20


def test_create_on_a_ping_url_registers_the_check_as_healthchecks_does(
    hb_api: ApiServer,
) -> None:
    with httpx.Client() as http:
        first = http.get(ping_url(hb_api, "nightly-backup", key=TEAM_PING_KEY) + "?create=1")
        again = http.get(ping_url(hb_api, "nightly-backup", key=TEAM_PING_KEY) + "?create=1")
        bad = http.get(ping_url(hb_api, "-dash", key=TEAM_PING_KEY) + "?create=1")
        shown = http.get(f"{hb_api.url}/medic/{HEARTBEAT_TOKEN}/service/nightly-backup").json()
        without = http.get(ping_url(hb_api, "weekly-report"))
        typo = http.get(ping_url(hb_api, "typo-job", "fial", key=TEAM_PING_KEY) + "?create=1")
    assert (typo.status_code, typo.text) == (400, "invalid url format")
    assert engine().service("typo-job") is None  # refused: nothing created to page in a day
    assert (first.status_code, first.text) == (201, "created")
    assert (again.status_code, again.text) == (200, "OK")
    assert (bad.status_code, bad.text) == (400, "invalid slug")
    assert (without.status_code, without.text) == (404, "not found")
    [created] = shown["results"]
    # Healthchecks' defaults (a day, an hour's grace); the key's team owns it.
    assert created["alert_interval"] == 1440
    assert created["max_duration"] == 3600  # a run after /start, as Healthchecks bounds it
    spec = engine().service("nightly-backup")
    assert spec is not None
    now = time.time()
    hung = Observation(1, now - 3700, "up", None, running_since=now - 3601)
    assert (is_bad(spec, hung, now)[0] or "").startswith("ran too long")
    assert created["team"] == "payments"
    assert created["defined_in"] == "api"
    assert len(engine().heartbeats.log("nightly-backup")) == 2


def test_an_api_started_on_a_file_with_one_bad_entry_takes_every_other_services_heartbeats(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A services file edited badly, then the API (re)started: every heartbeat answered
    500 while the checker, on the last good file, paged each service as silent. The
    services that validate are in force; the refusal is a metric and an alert."""
    catalogue(service("billing-api", window=60) + service("etl", window=60, priority="P9"))
    gds = str(Path(sys.executable).with_name("gds-notify"))
    for api in serve(monkeypatch):
        with httpx.Client() as http:
            good = http.get(ping_url(api, "billing-api", "fail"))
            broken = http.get(ping_url(api, "etl"))
            medic = http.post(
                f"{api.url}/medic/{HEARTBEAT_TOKEN}/heartbeat",
                json={"heartbeat_name": "billing-api", "status": "UP"},
            )
            metrics = http.get(f"{api.url}/metrics").text
    assert (good.status_code, good.text) == (200, "OK")
    assert (broken.status_code, broken.text) == (404, "not found")
    assert medic.status_code == 201, medic.text
    assert "gds_notify_heartbeat_catalogue_refused 1.0" in metrics
    assert engine().heartbeats.last()["billing-api"].status == "up"
    shell = subprocess.run([gds, "heartbeat", "billing-api"], capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    listed = subprocess.run([gds, "heartbeats"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "billing-api" in listed.stdout
    assert "services.etl.priority" in listed.stderr
    checked = subprocess.run([gds, "config", "check", "--offline"], capture_output=True, text=True)
    assert checked.returncode == 2
    assert "services.etl.priority" in checked.stderr


def test_a_team_token_registers_a_service_for_its_own_team_when_it_names_none(
    hb_api: ApiServer,
) -> None:
    base = f"{hb_api.url}/medic/{TEAM_PING_KEY}/service"
    service = {"heartbeat_name": "ledger-sync", "service_name": "Ledger", "alert_interval": 5}
    with httpx.Client() as http:
        registered = http.post(base, json=service)
        elsewhere = http.post(base, json=service | {"heartbeat_name": "x", "team": "dba"})
        # The data team's: "already registered" told it to send heartbeats it then got
        # 404 for.
        theirs = http.post(base, json=service | {"heartbeat_name": "etl"})
        shown = http.get(f"{base}/ledger-sync").json()
    assert registered.status_code == 201, registered.text
    assert [r["team"] for r in shown["results"]] == ["payments"]
    assert elsewhere.status_code == 400
    assert elsewhere.json()["message"] == "team: this token may register only team 'payments'"
    assert (theirs.status_code, theirs.json()["message"]) == (
        409,
        "heartbeat_name: registered by another team; choose another",
    )


def test_a_name_or_rid_ending_in_a_line_break_is_refused(hb_api: ApiServer) -> None:
    """Python's ``$`` matches before a final line break: ``evil\n`` registered, and its
    page, refused at intake for its one-line id, was dead-lettered; nobody was paged, ever.
    A ping creating ``trail\n`` was a 500; a rid kept its line break."""
    catalogue_key = f"{hb_api.url}/medic/{HEARTBEAT_TOKEN}/service"
    with httpx.Client() as http:
        medic = http.post(
            catalogue_key,
            json={"heartbeat_name": "evil\n", "service_name": "Evil", "alert_interval": 1},
        )
        created = http.get(ping_url(hb_api, "trail%0A", key=TEAM_PING_KEY) + "?create=1")
        rid = http.get(ping_url(hb_api, "anything") + "?rid=abc%0A")
    assert medic.status_code == 400
    assert medic.json()["message"].startswith("heartbeat_name: 1-100 letters")
    assert (created.status_code, created.text) == (400, "invalid slug")
    assert (rid.status_code, rid.text) == (400, "invalid rid")
    assert engine().registry.all() == {}


def test_registration_stops_at_the_registry_limit(
    hb_api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.engine.heartbeats import registry

    monkeypatch.setattr(registry, "MAX_REGISTERED", 1)
    base = f"{hb_api.url}/medic/{HEARTBEAT_TOKEN}/service"
    with httpx.Client() as http:
        one = http.post(
            base, json={"heartbeat_name": "a", "service_name": "A", "alert_interval": 5}
        )
        two = http.post(
            base, json={"heartbeat_name": "b", "service_name": "B", "alert_interval": 5}
        )
        ping = http.get(ping_url(hb_api, "c") + "?create=1")
    assert one.status_code == 201
    assert two.status_code == 400
    assert two.json() == {
        "success": False,
        "message": "the registry is full (1 services)",
        "results": "",
    }
    assert (ping.status_code, ping.text) == (400, "too many checks")
    assert set(engine().registry.all()) == {"a"}


def test_a_registration_that_no_longer_reads_leaves_every_other_service_watched(
    hb_api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A service an older version registered with a name now refused (a U+2028 in it, which
    intake would refuse in the page) must not stop the checker for every service."""
    from worker.engine.heartbeats.paging import run_check

    base = f"{hb_api.url}/medic/{HEARTBEAT_TOKEN}/service"
    with httpx.Client() as http:
        ok = http.post(base, json={"heartbeat_name": "a", "service_name": "A", "alert_interval": 5})
        refused = http.post(
            base, json={"heartbeat_name": "b", "service_name": "B\u2028C", "alert_interval": 5}
        )
    assert ok.status_code == 201
    assert refused.status_code == 400
    assert "single line" in refused.json()["message"]
    stored = json.loads(str(engine().redis.hget(keys.HEARTBEAT_SERVICES, "a")))
    stored["spec"] |= {"slug": "b", "name": "B\u2028C"}
    engine().redis.hset(keys.HEARTBEAT_SERVICES, "b", json.dumps(stored))
    # And one registered under a name ending in a line break, which Python's `$` let pass.
    stored["spec"] |= {"slug": "evil\n", "name": "Evil"}
    engine().redis.hset(keys.HEARTBEAT_SERVICES, "evil\n", json.dumps(stored))
    with caplog.at_level("ERROR", logger="worker.engine.heartbeats.registry"):
        assert set(engine().registry.all()) == {"a"}
        assert run_check(engine()) is not None
        assert run_check(engine()) is not None
        ping = httpx.get(ping_url(hb_api, "b"))
    assert caplog.text.count("registered service 'b' is not watched") == 1  # once a process
    assert (ping.status_code, ping.text) == (404, "not found")  # as if not registered
    # Registering it again is how it is mended: the unreadable entry is replaced.
    again = httpx.post(base, json={"heartbeat_name": "b", "service_name": "B", "alert_interval": 5})
    assert again.status_code == 201, again.text
    assert set(engine().registry.all()) == {"a", "b"}


def test_a_run_that_crashed_is_ended_by_the_next_run_that_finishes(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A starts and crashes without a word; run B starts and finishes. A's start must
    not keep "ran too long" open through every later run (as in Healthchecks, where a new
    start replaces the last). A run started after the one that finishes is still running."""
    catalogue(service("etl", window=60, extra='max_duration = "1h"'))
    for api in serve(monkeypatch):
        spec = engine().service("etl")
        assert spec is not None

        def post(suffix: str, rid: str, api: ApiServer = api) -> None:
            answer = httpx.post(ping_url(api, "etl", suffix), params={"rid": rid})
            assert answer.text == "OK"

        post("start", "A")  # crashes
        post("start", "B")
        post("start", "C")  # overlaps B, still going when B finishes
        post("", "B")
        running = engine().heartbeats.running_since([spec])
        assert set(engine().redis.hkeys(keys.heartbeat_runs("etl"))) == {"C"}
        post("", "C")
        assert engine().heartbeats.running_since([spec]) == {}
        assert list(running) == ["etl"]
