"""Recipients the SMTP server refused while it took the message for the others: the one
refused for now is sent again, as a job of its own that retries until the server takes
it; the one refused for good is dead-lettered, and replays once mended. Real worker, real
Redis, the sandbox's SMTP sink refusing at RCPT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import tasks
from cli.main import main
from config.settings import get_settings
from sandbox import SandboxServer
from tests.conftest import SandboxClient, wait_for
from worker.engine.runtime import engine
from worker.notification import Notification


@pytest.fixture
def api(service_env: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(service_env)
    yield client
    client.close()


def settled(job_id: str, state: str = "delivered", timeout: float = 20) -> dict[str, Any]:
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == state, timeout)
    record = engine().jobs.get(job_id)
    assert record is not None
    return record


def refuse(api: SandboxClient, **codes: int) -> None:
    recipients = {f"{name}@example.com": code for name, code in codes.items()}
    api.http.post("/sandbox/smtp/refuse", json={"recipients": recipients}).raise_for_status()


EVERYONE = "ok@example.com, later@example.com, gone@example.com"


@pytest.mark.parametrize("named_by", ["recipient", "routing rule"])
def test_a_recipient_refused_for_now_is_sent_again_and_one_refused_for_good_is_dead_lettered(
    api: SandboxClient, celery_worker: Any, monkeypatch: pytest.MonkeyPatch, named_by: str
) -> None:
    """Whoever named the recipients (the job, or a routing rule's email_to, which the
    resend and the replay must not send to in full again), the one refused for now gets
    the message again, and the one refused for good, once mended."""
    if named_by == "routing rule":
        rule = {"alert_name": "Nightly*", "channels": ["email"], "email_to": EVERYONE}
        monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
        get_settings.cache_clear()
    refuse(api, later=450, gone=550)
    job_id = tasks.enqueue(
        Notification(
            recipient=EVERYONE if named_by == "recipient" else "reports",
            subject="Nightly report",
            body="all good",
            alert_name="NightlyReport",
            idempotency_id=f"nightly-{named_by}",
        )
    )
    email = settled(job_id)["channels"]["email"]
    again, letter = email["result"]["resent_as"], email["result"]["refused_dead_letter"]
    recipients = email["recipients"]
    assert recipients["ok@example.com"] == "delivered"
    assert recipients["later@example.com"].startswith("refused: 450")
    assert recipients["later@example.com"].endswith(f"(sent again as job {again})")
    assert recipients["gone@example.com"].startswith("refused: 550")
    assert recipients["gone@example.com"].endswith(f"(dead letter {letter})")
    shown = CliRunner().invoke(main, ["status", job_id])
    assert shown.exit_code == 0, shown.output
    assert "later@example.com: refused: 450" in shown.output
    assert "gone@example.com: refused: 550" in shown.output

    # Sent again to the one refused for now, retried while the server still refuses it.
    wait_for(lambda: len((engine().jobs.get(again) or {}).get("attempts", [])) >= 2)
    child = engine().jobs.get(again)
    assert child is not None
    assert child["source"] == "refused"
    assert child["channels"]["email"]["recipients"] == {"later@example.com": "retrying"}
    assert child["notification"]["subject"] == "Nightly report"
    refuse(api)  # the mailbox has room again
    settled(again)
    [first, resent] = api.messages()
    assert sorted(first["rcpt_tos"]) == ["ok@example.com"]
    assert resent["rcpt_tos"] == ["later@example.com"]

    # Dead-lettered with the server's answer; replayed, it goes to that address alone.
    entry = engine().dead_letters.get(letter)
    assert entry is not None
    assert (entry["job_id"], entry["channel"]) == (job_id, "email")
    assert entry["reason"].startswith("refused by the SMTP server: gone@example.com (550")
    replayed = tasks.replay(letter)
    settled(replayed)
    assert api.messages()[-1]["rcpt_tos"] == ["gone@example.com"]
    assert engine().dead_letters.get(letter) is None


def test_a_partial_refusal_recorded_twice_makes_one_resend_and_one_dead_letter(
    api: SandboxClient, service_env: SandboxServer
) -> None:
    """A worker that died after the follow-up and before its record leaves the job to be
    delivered again: the second follow-up finds the first's job and letter."""
    from worker.engine import refused_recipients
    from worker.engine.delivery_job import DeliveryJob

    job_id = tasks.enqueue(Notification(recipient="ok@example.com", subject="s"))
    job = DeliveryJob.model_validate(engine().jobs.state_and_payload(job_id, "email")[1])
    refused = {"later@example.com": "450 4.2.2 full", "gone@example.com": "550 5.1.1 no"}
    first = refused_recipients.follow_up(engine(), job, refused)
    second = refused_recipients.follow_up(engine(), job, refused)
    assert first == second
    assert set(first) == {"resent_as", "refused_dead_letter"}
    assert len(engine().dead_letters.list()) == 1


def test_a_resend_that_dies_is_replayed_to_its_own_addresses_alone(
    api: SandboxClient, celery_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend to an address refused for now is refused for good later: its own dead
    letter, replayed once mended, goes to that address, not to the routing rule's list
    that the first message already reached."""
    rule = {"alert_name": "Nightly*", "channels": ["email"], "email_to": EVERYONE}
    monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
    get_settings.cache_clear()
    refuse(api, later=450)
    job_id = tasks.enqueue(
        Notification(recipient="reports", subject="Nightly report", alert_name="NightlyReport")
    )
    again = settled(job_id)["channels"]["email"]["result"]["resent_as"]
    refuse(api, later=550)  # the mailbox is gone now
    settled(again, "dead-lettered")
    refuse(api)  # and mended
    replayed = tasks.replay(f"{again}-email")
    settled(replayed)
    reached = [sorted(m["rcpt_tos"]) for m in api.messages()]
    assert reached == [["gone@example.com", "ok@example.com"], ["later@example.com"]]
