"""The GDS design's ``POST /ingest``, as its producers call it: recipients from the routing
rules by alert and database instance, the design's idempotency id, each recipient's state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import SandboxServer
from tests.api_server import ApiServer
from tests.conftest import SandboxClient, wait_for
from worker.engine.runtime import engine

RULES = (
    '[{"alert_name": "DiskFull", "db_instance_id": [42], "channels": ["email"],'
    ' "email_to": ["dba@example.com", "storage@example.com"]}]'
)


@pytest.fixture
def api(service_env: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(service_env)
    yield client
    client.close()


@pytest.fixture
def rules(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import get_settings

    monkeypatch.setenv("ROUTING_RULES", RULES)
    get_settings.cache_clear()


def alert(**fields: Any) -> dict[str, Any]:
    return {
        "alert_name": "DiskFull",
        "db_instance_id": 42,
        "subject": "Disk 95% full on db-42",
        "body_text": "Free space: 2 GB",
        "body_html": "<p>Free space: <b>2 GB</b></p>",
    } | fields


def finished(job_id: str) -> Any:
    return wait_for(lambda: (r := engine().jobs.get(job_id)) and r["status"] == "delivered" and r)


def test_an_ingested_alert_reaches_the_recipients_its_rule_names_once(
    rules: None, api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    expected_id = hashlib.sha256(
        b"DiskFull" + b"Disk 95% full on db-42" + b"Free space: 2 GB"
    ).hexdigest()
    with api_server.client() as http:
        first = http.post("/ingest", json=alert())
        again = http.post("/ingest", json=alert())
    assert first.status_code == again.status_code == 202
    body = first.json()
    assert body["status"] == "accepted"
    assert body["idempotency_id"] == expected_id
    assert again.json()["job_id"] == body["job_id"]
    assert again.json()["duplicate"] is True
    record = finished(body["job_id"])
    assert record["source"] == "ingest"
    assert record["channels"]["email"]["recipients"] == {
        "dba@example.com": "delivered",
        "storage@example.com": "delivered",
    }
    [message] = api.messages()
    assert sorted(message["rcpt_tos"]) == ["dba@example.com", "storage@example.com"]
    assert message["subject"] == "Disk 95% full on db-42"
    assert "<b>2 GB</b>" in message["html"]


def test_an_alert_without_a_subject_is_mailed_under_its_name_and_hashed_without_one(
    rules: None, api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    """The design's subject is optional: a missing part hashes as ""."""
    sent = alert()
    del sent["subject"]
    with api_server.client() as http:
        answer = http.post("/ingest", json=sent)
    assert answer.status_code == 202, answer.text
    expected_id = hashlib.sha256(b"DiskFull" + b"Free space: 2 GB").hexdigest()
    assert answer.json()["idempotency_id"] == expected_id
    finished(answer.json()["job_id"])
    [message] = api.messages()
    assert message["subject"] == "DiskFull"


def test_message_id_is_the_idempotency_id_and_a_refused_recipient_shows_in_the_job(
    rules: None, api_server: ApiServer, celery_worker: Any, api: SandboxClient
) -> None:
    api.http.post(
        "/sandbox/smtp/refuse", json={"recipients": {"storage@example.com": 550}}
    ).raise_for_status()
    with api_server.client() as http:
        answer = http.post("/ingest", json=alert(message_id="gds-msg-7"))
    assert answer.json()["idempotency_id"] == "gds-msg-7"
    record = finished(answer.json()["job_id"])
    recipients = record["channels"]["email"]["recipients"]
    assert recipients["dba@example.com"] == "delivered"
    assert recipients["storage@example.com"].startswith("refused: 550")
    assert [m["rcpt_tos"] for m in api.messages()] == [["dba@example.com"]]


def test_an_alert_no_rule_names_recipients_for_is_refused_naming_it(
    rules: None, api_server: ApiServer
) -> None:
    with api_server.client() as http:
        other_db = http.post("/ingest", json=alert(db_instance_id=7))
        no_name = http.post("/ingest", json={"subject": "s"})
    assert other_db.status_code == 422
    [problem] = other_db.json()["errors"]
    assert problem["field"] == "alert_name"
    assert "no routing rule names recipients" in problem["message"]
    assert "db_instance_id 7" in problem["message"]
    assert no_name.status_code == 422
    assert no_name.json()["errors"][0]["field"] == "alert_name"
    with api_server.client() as http:
        two_lines = http.post("/ingest", json=alert(message_id="a\nb"))
        huge = http.post("/ingest", json=alert(db_instance_id=2**64))
    # Named as the body names them, not as the notification they would become.
    assert two_lines.status_code == huge.status_code == 422
    assert [e["field"] for e in two_lines.json()["errors"]] == ["message_id"]
    [too_big] = huge.json()["errors"]
    assert too_big["field"] == "db_instance_id"
    assert "string" not in too_big["message"]  # ingest takes no string id
    assert list(engine().redis.scan_iter("gds:job:*")) == []


def test_an_alert_name_that_is_also_the_subject_is_refused_once_naming_it(
    service_env: SandboxServer, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a subject the alert's name is the email's subject: a line break in it was
    reported on `subject` too, a field the caller never sent."""
    from config.settings import get_settings

    rule = {"priority": ["normal"], "channels": ["email"], "email_to": ["ops@example.com"]}
    monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
    get_settings.cache_clear()
    with api_server.client() as http:
        answer = http.post("/ingest", json={"alert_name": "Disk\nFull", "body_text": "x"})
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["alert_name"]
