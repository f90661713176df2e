"""Hostile input through the real thing: a Celery worker, Redis, the PagerDuty emulator and
the SMTP sink requiring STARTTLS and AUTH.

- Any payload a producer can send to ``notify`` ends delivered (and is in the sandbox) or
  dead-lettered with its reason, or is refused at enqueue; the worker serves a normal job
  afterwards.
- Header injection (CR/LF in subject, recipient, team, alert_name, RFC 2047 tricks) never
  reaches the wire: checked on what the SMTP sink received (headers and RCPT) and what the
  PagerDuty emulator received (event fields and dedup_key).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kombu.exceptions import EncodeError

import tasks
from sandbox import SandboxServer
from tests.conftest import SMTP_PASSWORD, SMTP_USER, SandboxClient, in_thread_worker, wait_for
from tests.test_hostile_properties import (
    addresses,
    named_addresses,
    notification_fields,
    payloads,
    valid_notification,
)
from worker.engine.runtime import engine
from worker.providers.base import Notification

pytestmark = pytest.mark.slow

#: Every header the service writes; anything else on the wire was injected.
EXPECTED_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-GDS-Priority",
    "X-GDS-Alert-Name",
    "X-GDS-Idempotency-Id",
    "X-GDS-Job-Id",
    "Importance",
    "X-Priority",
    "Priority",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}


@pytest.fixture
def secure_mail(
    service_env: SandboxServer,
    mail_sandbox: SandboxServer,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> SandboxServer:
    """The service pointed at the sandbox whose SMTP sink requires STARTTLS and AUTH."""
    from config.settings import get_settings
    from tests.conftest import reconfigure

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    env = {
        "PAGERDUTY_API_URL": mail_sandbox.api_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mail_sandbox.smtp_port),
        "SMTP_USERNAME": SMTP_USER,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_STARTTLS": "true",
        "SMTP_CA_FILE": str(ca_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    reconfigure()
    return mail_sandbox


@pytest.fixture
def secure_worker(secure_mail: SandboxServer) -> Iterator[Any]:
    with in_thread_worker() as worker:
        yield worker


@pytest.fixture
def api(secure_mail: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(secure_mail)
    yield client
    client.close()


def outcome(task_id: str) -> tuple[str, dict[str, Any]] | None:
    """``("refused", dead letter)`` for an intake refusal, ``(status, record)`` for a job
    that reached a final state, else None."""
    letter = engine().dead_letters.get(task_id)
    if letter is not None and letter["channel"] == "intake":
        return "refused", letter
    record = engine().jobs.get(task_id)
    if record is not None and record["status"] in ("delivered", "dead-lettered"):
        return record["status"], record
    return None


def squeeze(text: str) -> str:
    return "".join(text.split())


def unique(payload: Any) -> Any:
    # Examples must not deduplicate each other: make a string idempotency id unique.
    if isinstance(payload, dict) and isinstance(payload.get("idempotency_id"), str):
        return {**payload, "idempotency_id": payload["idempotency_id"] + f"-{uuid.uuid4().hex}"}
    return payload


extras = st.fixed_dictionaries(
    {},
    optional={
        "team": st.sampled_from(["dba", "platform", "DBA"]),
        "channel": st.sampled_from(["email", "pagerduty"]),
    },
)
#: Valid notifications (hostile text and all) with a mail address as recipient, so most
#: of them can be delivered on whichever channel they are routed to.
deliverable = st.builds(
    lambda fields, to, extra: {**fields, "recipient": to, **extra},
    notification_fields,
    st.one_of(addresses, named_addresses),
    extras,
).filter(lambda f: valid_notification(f) is not None)


E2E_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@E2E_SETTINGS
@given(deliverable)
def test_valid_hostile_jobs_are_delivered_or_dead_lettered_with_a_reason(
    secure_worker: Any, api: SandboxClient, payload: dict[str, Any]
) -> None:
    check_outcome(payload, api)


@E2E_SETTINGS
@given(payloads)
def test_any_payload_is_delivered_or_dead_lettered_and_the_worker_lives_on(
    secure_worker: Any, api: SandboxClient, payload: Any
) -> None:
    check_outcome(payload, api)


def check_outcome(payload: Any, api: SandboxClient) -> None:
    from worker import app

    payload = unique(payload)
    try:
        result = app.send_task("notify", args=[payload])
    except EncodeError:
        return  # the producer's own JSON encoder refused it: nothing was queued
    kind, found = wait_for(lambda: outcome(result.id), timeout=30, interval=0.05)
    event(kind)  # --hypothesis-show-statistics shows the mix of outcomes
    if kind == "refused":
        assert found["reason"].startswith("invalid ")
        return
    for channel, info in found["channels"].items():
        if info["state"] == "dead":
            letter = engine().dead_letters.get(f"{result.id}-{channel}")
            assert letter is not None, found
            assert letter["reason"], found
            assert letter["last_error"]["retryable"] is False, letter  # no hostile-input retries
        elif channel == "pagerduty":
            dedup_key = info["result"]["dedup_key"]
            assert api.incidents(dedup_key=dedup_key), dedup_key
        else:
            assert api.messages(message_id=info["result"]["message_id"])


def test_the_worker_serves_normal_jobs_after_hostile_ones(
    secure_worker: Any, api: SandboxClient
) -> None:
    from worker import app

    ew = "=?utf-8?q?=0D=0ABcc:_evil@x.com?="
    hostile: list[tuple[Any, set[str]]] = [
        ({"recipient": "a@example.com", "subject": "x\ud800"}, {"refused"}),
        ({"recipient": "a@example.com", "subject": "s", "metadata": {"x": 10**5000}}, set()),
        (
            {"recipient": "db-1", "subject": "s" * 2_000_000, "priority": "critical"},
            {"delivered"},
        ),
        # Past the bound every door keeps (1,048,576 characters): refused, the field named.
        ({"recipient": "a@example.com", "subject": "s", "body": "b" * 3_000_000}, {"refused"}),
        ({"recipient": f"{ew} <a@example.com>", "subject": "s"}, {"refused"}),
        ({"recipient": "a@example.com", "subject": ew}, {"refused"}),
        ([1, 2, 3], {"refused"}),
        ("just a string", {"refused"}),
        (None, {"refused"}),
    ]
    for payload, expected in hostile:
        try:
            task_id = app.send_task("notify", args=[payload]).id
        except (EncodeError, ValueError):
            # The producer's own JSON encoder refused (10**5000): nothing was queued.
            assert not expected
            continue
        kind, _ = wait_for(lambda task_id=task_id: outcome(task_id), timeout=60)
        assert kind in expected, (str(payload)[:80], kind)
    [incident] = api.incidents()
    assert len(incident["summary"]) <= 1024
    job = tasks.enqueue(Notification(recipient="ops@example.com", subject="still alive"))
    wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "delivered", timeout=30)
    assert api.messages(to="ops@example.com")


def test_a_task_id_a_job_key_cannot_hold_gets_a_job_id_of_its_own(
    secure_worker: Any, api: SandboxClient
) -> None:
    """A Celery producer chooses its task ids, and a notify's job took it: ``X:attempts``
    was job X's attempt list (and another job's record could be overwritten, or a lookup
    hit the wrong kind of key and read as Redis down). Such an id gets a job id derived
    from it, the same each time; the first job is untouched."""
    from worker import app
    from worker.engine.intake import job_id_for_task

    first = tasks.enqueue(Notification(recipient="ops@example.com", subject="first"))
    wait_for(lambda: (engine().jobs.get(first) or {}).get("status") == "delivered", timeout=30)
    hostile = f"{first}:attempts"
    app.send_task(
        "notify", args=[{"recipient": "ops@example.com", "subject": "second"}], task_id=hostile
    )
    job_id = job_id_for_task(hostile)
    assert job_id != hostile
    assert job_id == job_id_for_task(hostile)  # a redelivered message: the same job
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered", timeout=30)
    kept = engine().jobs.get(first)
    assert kept is not None
    assert [a["outcome"] for a in kept["attempts"]][-1].startswith("delivered")
    assert engine().jobs.get(hostile) is None  # looked up by it: no job, not an outage
    assert len(api.messages(to="ops@example.com")) == 2


# -- header injection on the wire --------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recipient", "a@b.com\r\nBcc: evil@x.com"),
        ("recipient", "a@b.com\nBcc: evil@x.com"),
        ("subject", "Disk full\r\nBcc: evil@x.com"),
        ("subject", "Disk full\u2028Bcc: evil@x.com"),
        ("alert_name", "DiskFull\rBcc: evil@x.com"),
        ("team", "dba\r\nBcc: evil@x.com"),
    ],
)
def test_crlf_injection_is_refused_at_enqueue_and_dead_lettered_from_any_producer(
    secure_worker: Any, api: SandboxClient, field: str, value: str
) -> None:
    from worker import app

    payload = {"recipient": "a@b.com", "subject": "Disk full", field: value}
    with pytest.raises(tasks.InvalidJobError) as caught:
        tasks.enqueue(payload)
    assert [e["field"] for e in caught.value.errors] == [field]

    result = app.send_task("notify", args=[payload])
    letter = wait_for(lambda: engine().dead_letters.get(result.id))
    assert letter["channel"] == "intake"
    assert f"{field}: " in letter["reason"]
    ok = tasks.enqueue({"recipient": "ok@example.com", "subject": "after"})
    wait_for(lambda: (engine().jobs.get(ok) or {}).get("status") == "delivered")
    [message] = api.messages()  # only the good one reached the sink
    assert message["rcpt_tos"] == ["ok@example.com"]
    assert not api.messages(to="evil@x.com")


def test_what_goes_through_carries_no_injected_header_or_recipient(
    secure_worker: Any, api: SandboxClient
) -> None:
    hostile_text = 'Bcc: evil@x.com\tTo: evil@x.com; "quoted" <evil@x.com> é 🚨 \u202e'
    job = tasks.enqueue(
        {
            "recipient": '"Ops, Bcc: evil@x.com" <a@b.com>',
            "subject": "Disk full " + hostile_text,
            "alert_name": "Disk: full " + hostile_text,
            "body": "line 1\r\nBcc: evil@x.com\r\n\r\n.\r\nMAIL FROM:<evil@x.com>\r\n",
            "idempotency_id": "inj-mail-1",
            "team": "dba; Bcc: evil@x.com",
        }
    )
    wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "delivered")
    [message] = api.messages()
    assert message["rcpt_tos"] == ["a@b.com"]
    assert message["tls"] is True
    assert message["authenticated_as"] == SMTP_USER
    names = [name for name, _ in message["headers"]]
    assert set(names) <= EXPECTED_HEADERS
    assert len(names) == len(set(names))
    headers = dict(message["headers"])
    assert headers["X-GDS-Job-Id"] == job
    # The standard library's RFC 2047 round trip may drop the space between two non-ASCII
    # words ("é 🚨" comes back "é🚨"); every other character arrives as sent.
    assert squeeze(headers["Subject"]) == squeeze("Disk full " + hostile_text)
    assert squeeze(headers["X-GDS-Alert-Name"]) == squeeze("Disk: full " + hostile_text)
    assert "MAIL FROM:<evil@x.com>" in message["text"]  # body text stays body text


def paged_not_mailed(job_id: str) -> bool:
    """The job's page was delivered and its email dead-lettered."""
    record = engine().jobs.get(job_id) or {"channels": {}}
    states = {channel: info["state"] for channel, info in record["channels"].items()}
    return states == {"pagerduty": "delivered", "email": "dead"}


def test_a_job_that_pages_and_emails_is_never_refused_for_its_emails_sake(
    celery_worker: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusing the job at the door would refuse its page too: the page goes out, and the
    email is dead-lettered with the reason (an encoded word in the subject; a component
    recipient that a rule emails with no one to email)."""
    from config.settings import get_settings

    rules = [
        # A rule that emails components and names no one to email: every such email fails.
        {"alert_name": "Unmailed*", "channels": ["pagerduty", "email"]},
        {"priority": ["critical"], "channels": ["pagerduty", "email"], "email_to": "a@b.com"},
    ]
    monkeypatch.setenv("ROUTING_RULES", json.dumps(rules))
    get_settings.cache_clear()
    trick = "=?utf-8?q?=0D=0ABcc:_evil@x.com?="
    both = tasks.enqueue({"recipient": "db-2", "subject": trick, "priority": "critical"})
    unmailed = tasks.enqueue(
        {"recipient": "db-3", "subject": "s", "priority": "critical", "alert_name": "UnmailedX"}
    )
    for job in (both, unmailed):
        wait_for(lambda job=job: paged_not_mailed(job))
    letter = engine().dead_letters.get(f"{both}-email")
    assert letter is not None
    assert "encoded word" in letter["reason"]
    assert len(api.incidents()) == 2
    unsent = engine().dead_letters.get(f"{unmailed}-email")
    assert unsent is not None
    assert "recipient" in unsent["reason"]
    assert api.messages() == []


def test_encoded_word_subject_is_refused_for_email_and_paged_verbatim(
    secure_worker: Any, api: SandboxClient
) -> None:
    """Refused at the door when it would become an email header (the message's own check
    stays behind it); a page carries the text as it is."""
    trick = "=?utf-8?q?=0D=0ABcc:_evil@x.com?="
    with pytest.raises(tasks.InvalidJobError, match=r"subject: must not contain an RFC 2047"):
        tasks.enqueue({"recipient": "a@b.com", "subject": trick})
    page = tasks.enqueue({"recipient": "db-1", "subject": trick, "priority": "critical"})
    wait_for(lambda: (engine().jobs.get(page) or {}).get("status") == "delivered")
    assert api.messages() == []
    [event] = [e for e in api.events() if e["path"] == "/v2/enqueue"]
    assert event["body"]["payload"]["summary"] == trick


def test_pagerduty_fields_carry_no_line_break_and_keep_the_dedup_key(
    secure_worker: Any, api: SandboxClient
) -> None:
    job = tasks.enqueue(
        {
            "recipient": "db-prod-01\tBcc: evil@x.com",
            "subject": 'Disk full"}, "routing_key": "X", "a": {"',
            "body": 'line 1\r\nline 2\n"dedup_key": "other"\u2028end',
            "alert_name": "DiskFull",
            "priority": "critical",
            "idempotency_id": "inj-page-1",
            "metadata": {
                "group": "db",
                "note": "multi\r\nline",
                "custom": {"dedup_key": "evil\r\n"},
            },
            "team": "dba",
        }
    )
    wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "delivered")
    [event] = [e for e in api.events() if e["path"] == "/v2/enqueue"]
    body = event["body"]
    assert event["status"] == 202
    assert body["dedup_key"] == "inj-page-1"
    payload = body["payload"]
    assert payload["summary"] == 'Disk full"}, "routing_key": "X", "a": {"'
    for name in ("summary", "source", "component", "class", "group"):
        assert "\r" not in payload[name], name
        assert "\n" not in payload[name], name
    assert payload["custom_details"]["body"] == 'line 1\r\nline 2\n"dedup_key": "other"\u2028end'
    assert payload["custom_details"]["note"] == "multi\r\nline"
    [incident] = api.incidents()
    assert incident["dedup_key"] == "inj-page-1"
