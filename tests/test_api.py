"""The HTTP API over real HTTP (uvicorn on loopback), with a real Redis, a real worker and
the sandbox: what curl and other clients meet, every error status, and what each 202
leads to."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from sandbox import SandboxServer
from tests.api_server import ADMIN_TOKEN, HEARTBEAT_TOKEN, NOTIFY_TOKEN, ApiServer, serve
from tests.browser import CHROMIUM, headless
from tests.conftest import BAD_KEY, OUTAGE, TEAM_KEY, SandboxClient, dead_pages, wait_for
from tests.processes import WorkerProcess
from worker.engine import keys
from worker.engine.runtime import engine


@pytest.fixture
def api(service_env: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(service_env)
    yield client
    client.close()


def delivered(job_id: str) -> Any:
    return wait_for(lambda: (r := engine().jobs.get(job_id)) and r["status"] == "delivered" and r)


def curl(server: ApiServer, path: str, body: Any, token: str = NOTIFY_TOKEN) -> Any:
    """What a shell user runs: curl, a JSON body, a bearer token, and the answer's JSON."""
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            "-w",
            "\n%{http_code}",
            server.url + path,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(answer)


def test_curl_posts_a_page_and_an_email_and_both_arrive(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    status, page = curl(
        api_server,
        "/v1/notifications",
        {
            "recipient": "db-prod-01",
            "subject": "Disk full on db-prod-01",
            "priority": "critical",
            "idempotency_id": "api-disk-1",
            "team": "dba",
        },
    )
    assert status == 202
    assert page["channels"] == ["pagerduty"]
    assert page["duplicate"] is False
    status, mail = curl(
        api_server,
        "/v1/notifications",
        {"recipient": "oncall@example.com", "subject": "Nightly report", "body": "all good"},
    )
    assert status == 202
    assert mail["channels"] == ["email"]

    record = delivered(page["job_id"])
    assert record["source"] == "api"
    delivered(mail["job_id"])
    [incident] = api.incidents()
    assert incident["dedup_key"] == "api-disk-1"
    assert incident["routing_key"].endswith(TEAM_KEY[-4:])
    [message] = api.messages()
    assert message["subject"] == "Nightly report"
    assert message["rcpt_tos"] == ["oncall@example.com"]


def test_a_duplicate_answers_with_the_first_job_and_the_header_is_an_idempotency_id(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    note = {"recipient": "db-2", "subject": "lag", "priority": "critical"}
    with api_server.client() as http:
        first = http.post("/v1/notifications", json=note, headers={"Idempotency-Key": "k-1"})
        again = http.post("/v1/notifications", json=note, headers={"Idempotency-Key": "k-1"})
        in_body = http.post("/v1/notifications", json=note | {"idempotency_id": "k-1"})
        # Another notification under the same key is a copy too: the key names the
        # notification. The answer says what was queued, which is the first job's page.
        as_email = http.post(
            "/v1/notifications",
            json={"recipient": "dba@example.com", "subject": "other"},
            headers={"Idempotency-Key": "k-1"},
        )
        clash = http.post(
            "/v1/notifications",
            json=note | {"idempotency_id": "k-2"},
            headers={"Idempotency-Key": "k-1"},
        )
        bad_header = http.post(
            "/v1/notifications", json=note, headers={"Idempotency-Key": "k" * 1025}
        )
        # Blank, and a line break httpx lets through (NEL): each a 422 naming the header.
        blank = http.post("/v1/notifications", json=note, headers={"Idempotency-Key": ""})
        two_lines = http.post(
            "/v1/notifications", json=note, headers={b"Idempotency-Key": "a\x85b".encode("latin-1")}
        )
        # A key in UTF-8 (curl -H 'Idempotency-Key: café-1') is the same id in the body.
        utf8 = {b"Idempotency-Key": "café-1".encode()}
        header_utf8 = http.post("/v1/notifications", json=note, headers=utf8)
        body_utf8 = http.post("/v1/notifications", json=note | {"idempotency_id": "café-1"})
    assert first.status_code == again.status_code == in_body.status_code == 202
    assert first.json()["duplicate"] is False
    assert again.json() == {
        "job_id": first.json()["job_id"],
        "duplicate": True,
        "channels": ["pagerduty"],
    }
    assert in_body.json()["job_id"] == first.json()["job_id"]
    assert as_email.json() == again.json()
    assert clash.status_code == 422
    assert clash.json()["errors"][0]["field"] == "Idempotency-Key"
    assert bad_header.status_code == 422
    assert bad_header.json()["errors"][0]["field"] == "Idempotency-Key"
    assert blank.status_code == two_lines.status_code == 422
    assert blank.json()["errors"] == [
        {"field": "Idempotency-Key", "message": "must not be blank when given (omit it instead)"}
    ], blank.json()
    assert two_lines.json()["errors"][0]["field"] == "Idempotency-Key"
    assert "line" in two_lines.json()["errors"][0]["message"], two_lines.json()
    assert header_utf8.status_code == 202, header_utf8.text
    assert body_utf8.json() == header_utf8.json() | {"duplicate": True}
    record = engine().jobs.get(header_utf8.json()["job_id"])
    assert record is not None
    assert record["notification"]["idempotency_id"] == "café-1"
    delivered(first.json()["job_id"])
    delivered(header_utf8.json()["job_id"])
    time.sleep(0.3)
    assert sorted(i["dedup_key"] for i in api.incidents()) == ["café-1", "k-1"]
    assert len(api.events()) == 2


def test_links_and_images_pagerduty_would_refuse_are_422_at_the_door(
    api_server: ApiServer,
) -> None:
    """Checked at the worker alone, they were a 202 and then a page dead-lettered."""
    page = {"recipient": "db-1", "subject": "down", "priority": "critical"}
    with api_server.client() as http:
        links = http.post("/v1/notifications", json=page | {"metadata": {"links": "nope"}})
        no_href = http.post(
            "/v1/notifications", json=page | {"metadata": {"links": [{"text": "runbook"}]}}
        )
        images = http.post(
            "/v1/notifications", json=page | {"metadata": {"images": [{"src": "http://x/a.png"}]}}
        )
        # The emulator, as PagerDuty, refuses the whole event for a blank href.
        blank = http.post(
            "/v1/notifications", json=page | {"metadata": {"links": [{"href": " \t"}]}}
        )
        no_host = http.post(
            "/v1/notifications", json=page | {"metadata": {"images": [{"src": "https://"}]}}
        )
        good = http.post(
            "/v1/notifications",
            json=page
            | {
                "metadata": {
                    "links": [{"href": "https://runbooks.example/db", "text": "Runbook"}],
                    "images": [{"src": "https://grafana.example/d.png", "alt": "graph"}],
                }
            },
        )
    assert [a.status_code for a in (links, no_href, images, blank, no_host)] == [422] * 5
    messages = [a.json()["errors"][0] for a in (links, no_href, images, blank, no_host)]
    assert messages[0]["field"] == "metadata"
    assert messages[0]["message"] == "metadata.links: Input should be a valid list"
    assert messages[1]["message"] == "metadata.links.0.href: Field required"
    https = "must be an https:// URL with a host: PagerDuty shows no other"
    assert messages[2]["message"] == f"metadata.images.0.src: {https}"
    assert messages[3]["message"] == (
        "metadata.links.0.href: must not be blank: PagerDuty refuses the whole event"
    )
    assert messages[4]["message"] == f"metadata.images.0.src: {https}"
    assert good.status_code == 202
    # To an email they are any metadata: not refused.
    with api_server.client() as http:
        mail = http.post(
            "/v1/notifications",
            json={"recipient": "a@example.com", "subject": "s", "metadata": {"links": "x"}},
        )
    assert mail.status_code == 202, mail.text
    assert len(list(engine().redis.scan_iter("gds:job:*"))) == 2


def test_json_the_parser_will_not_build_is_422_naming_why_and_401_without_a_token(
    api_server: ApiServer,
) -> None:
    """A number of thousands of digits, or nesting past the recursion limit: JSON the
    standard library refuses after its grammar accepted it (FastAPI's bare 400 named
    nothing, and answered a caller with no token too)."""
    digits = b'{"recipient": "a@example.com", "subject": "s", "metadata": {"n": ' + b"9" * 5_000
    deep = b'{"recipient": "a@example.com", "subject": "s", "metadata": {"n": ' + b"[" * 100_000
    with api_server.client() as http:
        answers = [
            http.post("/v1/notifications", content=body + b"}}", headers=JSON_TYPE)
            for body in (digits, deep)
        ]
    with api_server.client(token=None) as anonymous:
        no_token = anonymous.post("/v1/notifications", content=digits + b"}}", headers=JSON_TYPE)
    assert [a.status_code for a in answers] == [422, 422]
    [number] = answers[0].json()["errors"]
    assert number["field"] == "body"
    assert number["message"].startswith("not valid JSON: Exceeds the limit (4300 digits)")
    assert "sys.set_int_max_str_digits" not in number["message"]
    assert answers[1].json()["errors"] == [
        {"field": "body", "message": "not valid JSON: nested too deeply"}
    ]
    assert no_token.status_code == 401
    assert list(engine().redis.scan_iter("gds:job:*")) == []


JSON_TYPE = {"Content-Type": "application/json"}


def test_bad_fields_are_422_each_named_and_nothing_is_queued(api_server: ApiServer) -> None:
    with api_server.client() as http:
        answer = http.post(
            "/v1/notifications",
            json={"recipient": " ", "subject": "x\nBcc: evil@example.com", "priority": "urgent"},
        )
        mail = http.post("/v1/notifications", json={"recipient": "nobody", "subject": "s"})
        not_json = http.post(
            "/v1/notifications",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        a_list = http.post("/v1/notifications", json=[1, 2])
        as_text = http.post(  # valid JSON, sent as `curl -d` sends it without -H
            "/v1/notifications",
            content=b'{"recipient": "a@example.com", "subject": "s"}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        empty = http.post("/v1/notifications", headers={"Content-Type": "application/json"})
        untyped = http.post(
            "/v1/notifications", content=b'{"recipient": "a@example.com", "subject": "s"}'
        )
        page = b'{"recipient": "db-1", "subject": "caf\xc3\xa9", "priority": "critical"}'
        latin1 = http.post(
            "/v1/notifications",
            content=page.replace(b"\xc3\xa9", b"\xe9"),
            headers={"Content-Type": "application/json"},
        )
        gzipped = http.post(
            "/v1/notifications",
            content=gzip.compress(page),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        encoded = http.post(
            "/v1/notifications", json={"recipient": "a@example.com", "subject": "=?utf-8?q?x?="}
        )
        bad_domain = http.post("/v1/notifications", json={"recipient": "a@-x-.com", "subject": "s"})
    assert answer.status_code == 422
    fields = {e["field"]: e["message"] for e in answer.json()["errors"]}
    assert fields["recipient"] == "must not be blank"
    assert "single line" in fields["subject"]
    assert fields["priority"].startswith("Input should be 'low'")
    assert mail.status_code == 422
    [problem] = mail.json()["errors"]
    assert problem["field"] == "recipient"
    assert problem["message"].startswith("'nobody' is not a valid email address")
    assert not_json.status_code == 422
    assert not_json.json()["errors"] == [{"field": "body", "message": "not valid JSON"}]
    assert a_list.status_code == 422
    assert a_list.json()["errors"] == [
        {"field": "body", "message": "the request's body must be a JSON object"}
    ]
    assert as_text.json()["errors"] == [
        {
            "field": "body",
            "message": "the request's body was not read as JSON (Content-Type "
            "'application/x-www-form-urlencoded'): send it with Content-Type: application/json",
        }
    ]
    assert untyped.json()["errors"] == [
        {
            "field": "body",
            "message": "the request's body was not read as JSON (no Content-Type): send it "
            "with Content-Type: application/json",
        }
    ]
    assert empty.json()["errors"] == [
        {"field": "body", "message": "the request has no body: send a JSON object"}
    ]
    # Bytes that are no JSON text at all (RFC 8259 is UTF-8) say why, not "error parsing".
    assert latin1.status_code == gzipped.status_code == 422
    assert latin1.json()["errors"] == [
        {"field": "body", "message": "not valid JSON: not UTF-8 (byte 0xe9 at 37)"}
    ]
    [compressed] = gzipped.json()["errors"]
    assert compressed["field"] == "body"
    assert "Content-Encoding 'gzip' is not accepted" in compressed["message"]
    # What would become an email header is refused at the door, not dead-lettered later.
    assert encoded.status_code == 422
    assert [e["field"] for e in encoded.json()["errors"]] == ["subject"]
    assert "RFC 2047 encoded word" in encoded.json()["errors"][0]["message"]
    # An address with a bad domain is no component sent without a paging priority.
    [domain] = bad_domain.json()["errors"]
    assert domain["field"] == "recipient"
    assert "page" not in domain["message"], domain
    assert "))" not in domain["message"], domain
    assert list(engine().redis.scan_iter("gds:job:*")) == []


def test_a_wrong_type_is_one_problem_named_by_its_field(api_server: ApiServer) -> None:
    # pydantic reports each member of a union, and the tags of a JSON value, as if they
    # were fields: `db_instance_id.int`, `metadata.n.list.0`. A producer is told the field.
    base = {"recipient": "a@example.com", "subject": "s"}
    with api_server.client() as http:
        listed = http.post("/v1/notifications", json={**base, "db_instance_id": [7]})
        fraction = http.post("/v1/notifications", json={**base, "db_instance_id": 7.5})
        whole = http.post("/v1/notifications", json={**base, "db_instance_id": 7.0})
    assert listed.status_code == fraction.status_code == 422
    assert listed.json()["errors"] == [
        {"field": "db_instance_id", "message": "must be an integer or a string, not a list"}
    ]
    assert fraction.json()["errors"] == [
        {"field": "db_instance_id", "message": "must be an integer or a string, not the number 7.5"}
    ]
    assert whole.status_code == 202, whole.text


def test_a_422_stays_small_and_printable_whatever_the_body_held(api_server: ApiServer) -> None:
    """50,000 bad alerts answered megabytes, each problem twice; an unknown key of 300,000
    characters with line breaks came back whole, breaks and all."""
    alerts = [{"status": "firing", "labels": {"n": i}} for i in range(50_000)]
    hook = {"version": "4", "status": "firing", "alerts": alerts}
    key = "x\n" * 150_000
    with api_server.client() as http:
        many = http.post("/v1/alertmanager", json=hook)
        odd = http.post(
            "/v1/notifications", json={"recipient": "a@example.com", "subject": "s", key: 1}
        )
    assert many.status_code == odd.status_code == 422
    assert len(many.content) < 10_000
    listed = many.json()
    assert len(listed["errors"]) == 20
    assert listed["errors"][0]["field"] == "alerts.0.labels.n"
    assert listed["error"].endswith("; and 49980 more problems")
    [unknown] = odd.json()["errors"]
    assert len(unknown["field"]) <= 200
    assert unknown["field"].startswith("x\\nx\\n")
    assert "\n" not in unknown["field"]


def test_tokens_401_without_or_with_an_unknown_one_and_403_without_the_scope(
    api_server: ApiServer,
) -> None:
    note = {"recipient": "db-2", "subject": "s", "priority": "critical"}
    with api_server.client(token=None) as anonymous:
        missing = anonymous.post("/v1/notifications", json=note)
        health = anonymous.get("/healthz")
    with api_server.client("gdsn_not-a-configured-token") as stranger:
        unknown = stranger.post("/v1/notifications", json=note)
    with api_server.client(HEARTBEAT_TOKEN) as cron:
        wrong_scope = cron.post("/v1/notifications", json=note)
    with api_server.client(NOTIFY_TOKEN) as producer:
        not_admin = producer.get("/v1/dead-letters")
    with api_server.client(ADMIN_TOKEN) as ops:
        admin = ops.get("/v1/dead-letters")
        admin_sends = ops.post("/v1/notifications", json=note)
    assert missing.status_code == unknown.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert "not configured" in unknown.json()["error"]
    assert wrong_scope.status_code == 403
    assert wrong_scope.json()["error"] == "token 'cron' does not have the 'notify' scope"
    assert not_admin.status_code == 403
    assert admin.status_code == 200
    assert admin_sends.status_code == 202  # admin can do everything
    assert health.status_code == 200
    for answer in (missing, unknown, wrong_scope, not_admin):
        assert NOTIFY_TOKEN not in answer.text
        assert HEARTBEAT_TOKEN not in answer.text


def test_a_body_that_is_not_json_from_a_caller_without_a_token_is_401_and_not_counted(
    api_server: ApiServer,
) -> None:
    """FastAPI parses the body before the route's token check runs: at the doors whose
    refusals are counted, a stranger's garbage is a 401, not a 422 that anyone could run
    up the count of invalid notifications with."""
    garbage, as_json = b"{not json", {"Content-Type": "application/json"}
    with api_server.client(token=None) as anonymous:
        missing = [
            anonymous.post(path, content=garbage, headers=as_json)
            for path in ("/v1/notifications", "/ingest")
        ]
    with api_server.client("gdsn_not-a-configured-token") as stranger:
        unknown = stranger.post("/v1/alertmanager", content=garbage, headers=as_json)
    with api_server.client(HEARTBEAT_TOKEN) as pinger:  # a real token, not one to notify
        no_scope = pinger.post("/v1/notifications", content=garbage, headers=as_json)
    with api_server.client() as producer:
        producer_garbage = producer.post("/v1/notifications", content=garbage, headers=as_json)
    assert [a.status_code for a in (*missing, unknown)] == [401, 401, 401]
    assert all(a.headers["WWW-Authenticate"] == "Bearer" for a in (*missing, unknown))
    assert "not configured" in unknown.json()["error"]
    assert no_scope.status_code == 403  # as for a body it could read
    assert "does not have the 'notify' scope" in no_scope.json()["error"]
    assert producer_garbage.status_code == 422  # a caller with a token learns what is wrong
    counted: dict[str, str] = engine().redis.hgetall(keys.STATS)  # type: ignore[assignment]
    assert {k: v for k, v in counted.items() if k.endswith(":invalid")} == {
        "notifications:api:invalid": "1"
    }


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in serve(monkeypatch, API_MAX_BODY_BYTES="2048"):
        note = {"recipient": "db-2", "subject": "s", "body": "x" * 4096, "priority": "critical"}
        with server.client() as http:
            declared = http.post("/v1/notifications", json=note)

            streamed = http.post(
                "/v1/notifications",
                content=iter([json.dumps(note).encode()]),  # no Content-Length: chunked
                headers={"Content-Type": "application/json"},
            )
            small = http.post("/v1/notifications", json=note | {"body": "fits"})
        assert declared.status_code == streamed.status_code == 413
        assert "2048 bytes" in declared.json()["error"]
        assert "2048 bytes" in streamed.json()["error"]
        assert small.status_code == 202


def test_a_body_trickled_slower_than_the_read_timeout_is_408(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in serve(monkeypatch, API_READ_TIMEOUT="1"):
        body = json.dumps({"recipient": "db-2", "subject": "slow", "priority": "critical"})
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                (
                    "POST /v1/notifications HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {NOTIFY_TOKEN}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body[:10].encode()
            )
            started = time.monotonic()
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408")
        assert "did not arrive within 1 s" in answer
        assert time.monotonic() - started < 5
        assert list(engine().redis.scan_iter("gds:job:*")) == []


def test_a_token_over_its_rate_is_429_with_retry_after_and_others_are_not(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in serve(monkeypatch, API_RATE_LIMIT="3/minute"):
        note = {"recipient": "db-2", "subject": "s", "priority": "critical"}
        with server.client() as http:
            answers = [http.post("/v1/notifications", json=note) for _ in range(4)]
        with server.client(ADMIN_TOKEN) as ops:
            other = ops.post("/v1/notifications", json=note)
        assert [a.status_code for a in answers] == [202, 202, 202, 429]
        assert 50 <= int(answers[-1].headers["Retry-After"]) <= 61
        assert "retry in" in answers[-1].json()["error"]
        assert other.status_code == 202
        # The window lives in Redis, under the token's name hashed, never the token.
        stored = " ".join(engine().redis.scan_iter(f"{keys.API_RATE}:*"))
        assert "producer" not in stored
        assert NOTIFY_TOKEN not in stored


def test_a_job_no_replica_confirmed_is_503_naming_the_job(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDIS_MIN_REPLICAS asks for a replica this Redis does not have: the job is written
    on the master, not acknowledged. The answer names it: a producer that sent no
    idempotency id would otherwise send it again, as a second job."""
    api = serve(monkeypatch, REDIS_MIN_REPLICAS="1", REDIS_WAIT_TIMEOUT="0.1")
    server = next(api)
    try:
        with server.client() as http:
            answer = http.post(
                "/v1/notifications", json={"recipient": "a@example.com", "subject": "s"}
            )
            assert answer.status_code == 503
            assert answer.headers["Retry-After"] == "5"
            job_id = answer.json()["job_id"]
            assert "confirmed by 0 of the 1 replicas" in answer.json()["error"]
            assert f"GET /v1/jobs/{job_id} says whether it stood" in answer.json()["error"]
            looked_up = http.get(f"/v1/jobs/{job_id}")
            # The producer's retry, with an idempotency id this time, twice: the first
            # retry's job is named by the second, whose own id was never written.
            once = {"recipient": "a@example.com", "subject": "s", "idempotency_id": "r-1"}
            first, again = (http.post("/v1/notifications", json=once) for _ in range(2))
            assert first.status_code == again.status_code == 503
            assert again.json()["job_id"] == first.json()["job_id"]
            assert http.get(f"/v1/jobs/{again.json()['job_id']}").status_code == 200
        assert looked_up.status_code == 200
        assert looked_up.json()["id"] == job_id
    finally:
        next(api, None)


def test_a_write_redis_did_not_answer_in_time_is_not_said_to_be_unstored(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read timeout comes after the script was sent: it may have run, so the answer
    does not say "nothing was stored" (a producer would resend without a care)."""
    import redis

    def timed_out(*args: Any, **kwargs: Any) -> None:
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(engine().jobs, "create", timed_out)
    with api_server.client() as http:
        answer = http.post("/v1/notifications", json={"recipient": "a@example.com", "subject": "s"})
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "5")
    assert answer.json()["error"] == (
        "Redis did not answer in time: what was sent may have been stored; retry later with "
        "the same idempotency id"
    )


def test_redis_unreachable_is_503_with_retry_after_never_202(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from config.settings import get_settings
    from tests.conftest import closed_port_url

    monkeypatch.setenv("REDIS_URL", closed_port_url().replace("http://", "redis://"))
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING, logger="api"), api_server.client() as http:
        answer = http.post(
            "/v1/notifications", json={"recipient": "db-2", "subject": "s", "priority": "critical"}
        )
        ready = http.get("/readyz")
        # Heartbeats by the key in the path: told to come back, and the key never logged.
        ping = http.get(f"/ping/{HEARTBEAT_TOKEN}/billing-api")
        beat = {"heartbeat_name": "billing-api", "status": "UP"}
        medic = http.post(f"/medic/{HEARTBEAT_TOKEN}/heartbeat", json=beat)
        # What a path carries is logged as sent: decoded, an ESC sequence reached the log.
        http.get(f"/ping/{HEARTBEAT_TOKEN}/zz%1B%5B2Jcleared")
        http.post(
            "/v1/incidents/a%1B%5B31mRED%C2%85NEL/resolve",
            headers={"Authorization": f"Bearer {NOTIFY_TOKEN}"},
        )
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert "nothing was stored" in answer.json()["error"]
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["redis"]
    assert (ping.status_code, ping.text, ping.headers["Retry-After"]) == (
        503,
        "redis unavailable",
        "5",
    )
    assert (medic.status_code, medic.headers["Retry-After"]) == (503, "5")
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"/ping/…{HEARTBEAT_TOKEN[-4:]}/billing-api" in line for line in logged), logged
    assert any(f"/medic/…{HEARTBEAT_TOKEN[-4:]}/heartbeat" in line for line in logged), logged
    assert not any(HEARTBEAT_TOKEN in line for line in logged), logged
    assert any("/zz%1B%5B2Jcleared" in line for line in logged), logged
    assert any("/v1/incidents/a%1B%5B31mRED%C2%85NEL/resolve" in line for line in logged), logged
    assert not any("\x1b" in line or "\x85" in line for line in logged), logged


def test_acknowledge_and_resolve_over_http(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    with api_server.client() as http:
        trigger = http.post(
            "/v1/notifications",
            json={
                "recipient": "db-3",
                "subject": "down",
                "priority": "critical",
                "idempotency_id": "db-3/disk",  # a dedup key with a slash
                "team": "dba",
            },
        )
        delivered(trigger.json()["job_id"])
        ack = http.post("/v1/incidents/db-3%2Fdisk/acknowledge", json={"team": "dba"})
        delivered(ack.json()["job_id"])
        resolve = http.post("/v1/incidents/db-3/disk/resolve", json={"team": "dba"})
        delivered(resolve.json()["job_id"])
        no_body = http.post("/v1/incidents/nothing-open/resolve")
        job = http.get(f"/v1/jobs/{resolve.json()['job_id']}")
        bad_teams = [
            http.post("/v1/incidents/db-3/disk/resolve", json={"team": team})
            for team in ("dba\nX-Evil: 1", "   ", "dba\u2028")
        ]
        misspelt = http.post("/v1/incidents/db-3/disk/resolve", json={"teams": "dba"})
        two_lines = http.post("/v1/incidents/db-3%0Adisk/acknowledge", json={"team": "dba"})
    assert ack.status_code == resolve.status_code == no_body.status_code == 202
    [incident] = api.incidents(dedup_key="db-3/disk")
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "acknowledge", "resolve"]
    assert incident["status"] == "resolved"
    assert job.json()["action"] == "resolve"
    assert job.json()["dedup_key"] == "db-3/disk"
    for refused in bad_teams:  # as a notification's team is refused: nothing queued
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"] == [
            {"field": "team", "message": "must be a non-blank single line"}
        ]
    assert misspelt.status_code == 422
    assert misspelt.json()["errors"] == [
        {"field": "teams", "message": "Extra inputs are not permitted"}
    ]
    # A key over two lines: refused naming it, not a 404 for a route it matched none of.
    assert two_lines.status_code == 422
    assert two_lines.json()["errors"] == [
        {"field": "dedup_key", "message": "must be a non-blank line"}
    ]
    records = [k for k in engine().redis.scan_iter("gds:job:*") if k.count(":") == 2]
    assert len(records) == 4  # the trigger, the acknowledge and the two resolves


def test_a_job_reads_as_gds_notify_status_json_prints_it(
    api_server: ApiServer, celery_worker: Any
) -> None:
    with api_server.client() as http:
        job_id = http.post(
            "/v1/notifications", json={"recipient": "a@example.com", "subject": "hello"}
        ).json()["job_id"]
        delivered(job_id)
        answer = http.get(f"/v1/jobs/{job_id}")
        missing = http.get("/v1/jobs/no-such-job")
    printed = CliRunner().invoke(main, ["status", job_id, "--json"])
    assert printed.exit_code == 0
    assert answer.status_code == 200
    assert answer.json() == json.loads(printed.output)
    assert answer.json()["channels"]["email"]["recipients"] == {"a@example.com": "delivered"}
    assert missing.status_code == 404


def test_recent_jobs_are_listed_newest_first(api_server: ApiServer, celery_worker: Any) -> None:
    with api_server.client() as http:
        ids = [
            http.post(
                "/v1/notifications", json={"recipient": "a@example.com", "subject": f"n{i}"}
            ).json()["job_id"]
            for i in range(3)
        ]
        for job_id in ids:
            delivered(job_id)
        listed = http.get("/v1/jobs", params={"limit": 2}).json()["jobs"]
        pending = http.get("/v1/jobs", params={"status": "pending"}).json()["jobs"]
        bad = http.get("/v1/jobs", params={"status": "lost"})
    printed = CliRunner().invoke(main, ["jobs", "--limit", "2", "--json"])
    assert [j["id"] for j in listed] == ids[:0:-1]
    assert listed == json.loads(printed.output)
    assert pending == []
    assert bad.status_code == 422


def test_dead_letters_chosen_by_time_and_reason_as_dlq_list_chooses(
    api_server: ApiServer,
) -> None:
    """After an outage, a script picks what it killed as `dlq list --since --reason` does:
    by the time they died and the words of their reason; a `since` it cannot read is
    refused, naming it."""
    dead_pages(("old-pagerduty", OUTAGE), ("a-pagerduty", OUTAGE), ("b-pagerduty", BAD_KEY))
    engine().redis.zadd(keys.DEAD_LETTER_INDEX, {"old-pagerduty": time.time() - 3 * 3600})
    two_hours_ago = datetime.fromtimestamp(time.time() - 7200, UTC).replace(tzinfo=None)
    with api_server.client(ADMIN_TOKEN) as ops:
        recent = ops.get("/v1/dead-letters", params={"since": "2h"}).json()
        since_time = ops.get("/v1/dead-letters", params={"since": two_hours_ago.isoformat()})
        by_reason = ops.get("/v1/dead-letters", params={"reason": "http 503", "limit": 1}).json()
        both = ops.get("/v1/dead-letters", params={"reason": "HTTP 503", "since": "2h"}).json()
        unreadable = ops.get("/v1/dead-letters", params={"since": "yesterday-ish"})
        blank = ops.get("/v1/dead-letters", params={"reason": ""})
    assert sorted(e["id"] for e in recent["dead_letters"]) == ["a-pagerduty", "b-pagerduty"]
    assert recent["total"] == 2
    assert since_time.json() == recent  # a time without a zone is UTC
    assert by_reason["total"] == 2  # both 503s counted, one shown
    assert [e["id"] for e in by_reason["dead_letters"]] == ["a-pagerduty"]  # the newest
    assert [e["id"] for e in both["dead_letters"]] == ["a-pagerduty"]
    assert both["total"] == 1
    assert unreadable.status_code == 422
    [problem] = unreadable.json()["errors"]
    assert problem["field"] == "since"
    assert "a duration ('30m', '2h', '1d') or an ISO 8601 time" in problem["message"]
    assert blank.status_code == 422
    assert blank.json()["errors"][0]["field"] == "reason"


def test_dead_letters_listed_shown_and_replayed_by_an_admin(
    api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    api.faults({"status": 400})
    with api_server.client() as http:
        job_id = http.post(
            "/v1/notifications",
            json={"recipient": "db-4", "subject": "rejected once", "priority": "critical"},
        ).json()["job_id"]
    wait_for(lambda: engine().dead_letters.count() == 1)
    with api_server.client(ADMIN_TOKEN) as ops:
        listed = ops.get("/v1/dead-letters").json()
        pages = ops.get("/v1/dead-letters", params={"channel": "pagerduty"}).json()
        emails = ops.get("/v1/dead-letters", params={"channel": "email"}).json()
        no_such = ops.get("/v1/dead-letters", params={"channel": "sms"})
        entry_id = listed["dead_letters"][0]["id"]
        shown = ops.get(f"/v1/dead-letters/{entry_id}").json()
        # A replay under way elsewhere (`gds-notify dlq replay`) holds the letter.
        hold = engine().locks.acquire(keys.dead_letter_replay(entry_id), 30)
        assert hold is not None
        held = ops.post(f"/v1/dead-letters/{entry_id}/replay")
        hold.release()
        replayed = ops.post(f"/v1/dead-letters/{entry_id}/replay")
        gone = ops.get(f"/v1/dead-letters/{entry_id}")
        unknown = ops.post("/v1/dead-letters/nope/replay")
    assert listed["total"] == 1
    assert pages == listed
    assert emails == {"dead_letters": [], "total": 0}
    assert no_such.status_code == 422
    assert no_such.json()["errors"][0]["field"] == "channel"
    assert shown["job_id"] == job_id
    assert shown["reason"].startswith("permanent error")
    assert held.status_code == 409
    assert held.headers["Retry-After"] == "5"
    assert "being replayed elsewhere now" in held.json()["error"]
    assert replayed.status_code == 202
    delivered(replayed.json()["job_id"])
    assert gone.status_code == 404
    assert unknown.status_code == 404
    assert [i["summary"] for i in api.incidents()] == ["rejected once"]


def test_a_job_refused_at_intake_is_named_as_such_without_its_reason_for_a_producer(
    api_server: ApiServer,
) -> None:
    engine().dead_letters.add(
        entry_id="refused-1",
        job_id=None,
        channel="intake",
        reason="invalid notification: subject: 'what the producer sent'",
        payload={},
    )
    with api_server.client() as producer:
        answer = producer.get("/v1/jobs/refused-1")
    assert answer.status_code == 404
    message = answer.json()["error"]
    assert "dead-lettered before it became a job" in message
    assert "GET /v1/dead-letters/refused-1 (admin)" in message
    assert "what the producer sent" not in message  # dead letters are for admin tokens


def test_a_dead_letter_nested_as_deep_as_a_producer_sent_it_is_still_shown(
    api_server: ApiServer,
) -> None:
    # notify dead-letters a payload whose metadata is nested 900 deep, as it came; pydantic's
    # serializer stopped at such depth and every listing answered 500.
    deep: dict[str, Any] = {}
    for _ in range(900):
        deep = {"m": deep}
    engine().dead_letters.add(
        entry_id="deep-one", job_id=None, channel="intake", reason="too deep", payload=deep
    )
    with api_server.client(ADMIN_TOKEN) as ops:
        listed = ops.get("/v1/dead-letters")
        shown = ops.get("/v1/dead-letters/deep-one")
    assert listed.status_code == shown.status_code == 200
    assert listed.json()["dead_letters"][0]["id"] == "deep-one"
    assert shown.json()["payload"] == deep


def test_the_schema_and_the_docs_page(api_server: ApiServer, tmp_path: Path) -> None:
    schema = httpx.get(f"{api_server.url}/openapi.json").json()
    assert "/v1/notifications" in schema["paths"]
    assert "/v1/incidents/{dedup_key}/acknowledge" in schema["paths"]  # no convertor shown
    assert "JobRequest" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    dom = headless(f"{api_server.url}/docs", tmp_path, script_ms=5000)
    assert "GDS Notification Service" in dom
    assert "/v1/notifications" in dom
    assert "/v1/alertmanager" in dom


def test_readiness_names_each_queue_no_worker_consumes(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The Procfile's pools as real processes. The email pool alone: the page pool is dead,
    and pages are what the service is for, so it is not ready. The page pool alone: ready,
    email's absence shown (a ticket of its own, and an idle-priority pool may miss its
    reports through a page storm)."""
    email_pool = WorkerProcess(tmp_path / "email.log", "-P", "threads", "-c", "2", "-Q", "email")
    page_pool = WorkerProcess(
        tmp_path / "pages.log", "-P", "threads", "-c", "2", "-Q", "pagerduty,celery"
    )
    try:
        email_pool.start()
        with httpx.Client(base_url=api_server.url) as anonymous:
            # A worker process takes seconds to start and report: more on a loaded machine.
            emails_only = wait_for(
                lambda: (r := anonymous.get("/readyz")).json()["checks"].get("workers") and r,
                timeout=60,
            )
            page_pool.start()
            email_pool.stop()
            pages_only = wait_for(
                lambda: (
                    (r := anonymous.get("/readyz")).status_code == 200
                    and not r.json()["checks"]["queues"]["email"]
                    and r
                ),
                timeout=60,
            )
    finally:
        email_pool.stop()
        page_pool.stop()
    assert emails_only.status_code == 503
    assert emails_only.json()["failing"] == ["workers:pagerduty", "workers:celery"]
    queues = emails_only.json()["checks"]["queues"]
    assert queues["email"] == emails_only.json()["checks"]["workers"]
    assert pages_only.json()["failing"] == []
    assert pages_only.json()["checks"]["queues"]["pagerduty"]


def test_readiness_names_what_is_missing(
    api_server: ApiServer, celery_worker: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from config.catalogue import ServiceSpec
    from config.settings import get_settings
    from worker.engine.heartbeats.registry import Registration

    with httpx.Client(base_url=api_server.url) as anonymous:
        ready = wait_for(lambda: (r := anonymous.get("/readyz")).status_code == 200 and r)
        assert ready.json()["checks"]["workers"]
        assert anonymous.get("/health").json() == {"status": "ok"}
        engine().redis.delete(keys.WORKERS)  # no worker has said it is up
        no_workers = anonymous.get("/readyz")
        # A service registered through Medic's API turns monitoring on as a file does.
        spec = ServiceSpec(slug="etl", name="ETL", team="data", priority="P2", window=60)
        assert engine().registry.add(Registration.new(spec))
        registered = anonymous.get("/readyz")
        engine().redis.delete(keys.HEARTBEAT_SERVICES)
        catalogue = tmp_path / "services.toml"
        catalogue.write_text("")
        monkeypatch.setenv("HEARTBEAT_SERVICES_FILE", str(catalogue))
        get_settings.cache_clear()
        never_checked = anonymous.get("/readyz")
    assert no_workers.status_code == 503
    assert no_workers.json()["failing"] == ["workers"]
    assert registered.json()["failing"] == ["workers", "heartbeat_check"]
    assert never_checked.status_code == 503
    assert "heartbeat_check" in never_checked.json()["failing"]
