"""One delivery step, engine only: no Celery anywhere, a real Redis and the sandbox over
HTTP. Each way a step can end comes back as an outcome; the claim is never left behind."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from config.queues import QUEUE_OF
from sandbox import SandboxServer
from tests.conftest import SandboxClient
from worker.channels import Channel
from worker.engine import keys
from worker.engine.delivery import Outcome, OutcomeKind, deliver
from worker.engine.intake import accept, new_job_id
from worker.engine.runtime import Engine, engine
from worker.job_request import parse_request


@pytest.fixture
def api(service_env: SandboxServer) -> Any:
    client = SandboxClient(service_env)
    yield client
    client.close()


def queued(eng: Engine, **fields: Any) -> tuple[str, Channel, str, dict[str, Any]]:
    """Intake takes a job; returns (job id, channel, message id, delivery payload), the
    payload read back from the message intake put on the queue (nothing consumes it)."""
    values = {"recipient": "db-9", "subject": "disk full", "priority": "critical"} | fields
    accepted = accept(eng, parse_request(values), new_job_id(), "test")
    [channel] = accepted.channels
    envelope = json.loads(str(eng.redis.rpop(QUEUE_OF[channel])))
    [[payload], _, _] = json.loads(base64.b64decode(envelope["body"]))
    return accepted.job_id, channel, envelope["headers"]["id"], payload


def step(eng: Engine, task_id: str, payload: Any, hint: str = "pagerduty") -> Outcome:
    outcome = deliver(eng, payload, task_id, hint)
    assert not eng.redis.exists(keys.delivery_claim(payload["job_id"], payload["channel"]))
    return outcome


def test_delivered_then_a_second_copy_is_skipped(service_env: Any, api: SandboxClient) -> None:
    eng = engine()
    job_id, _, task_id, payload = queued(eng, idempotency_id="e-1")
    assert step(eng, task_id, payload) == Outcome(OutcomeKind.DELIVERED)
    assert step(eng, task_id, payload) == Outcome(OutcomeKind.SKIPPED, reason="delivered")
    record = eng.jobs.get(job_id)
    assert record is not None
    assert record["status"] == "delivered"
    assert [a["outcome"] for a in record["attempts"]] == ["delivered", "skipped: delivered"]
    assert [a["attempt"] for a in record["attempts"]] == [1, None]
    assert len(api.events()) == 1


def test_a_server_error_is_a_retry_with_the_policys_delay(
    service_env: Any, api: SandboxClient
) -> None:
    eng = engine()
    job_id, _, task_id, payload = queued(eng, idempotency_id="e-2")
    api.faults({"status": 503})
    outcome = step(eng, task_id, payload)
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.delay is not None
    assert 0 <= outcome.delay <= eng.settings.retry_base_seconds
    record = eng.jobs.get(job_id)
    assert record is not None
    assert record["channels"]["pagerduty"]["state"] == "retrying"
    assert record["channels"]["pagerduty"]["attempts"] == 1
    assert step(eng, task_id, payload).kind is OutcomeKind.DELIVERED
    assert eng.jobs.get(job_id)["channels"]["pagerduty"]["attempts"] == 2  # type: ignore[index]


def test_a_rejected_event_is_dead_with_its_reason(service_env: Any, api: SandboxClient) -> None:
    eng = engine()
    job_id, _, task_id, payload = queued(eng, idempotency_id="e-3")
    api.faults({"status": 400})
    outcome = step(eng, task_id, payload)
    assert outcome.kind is OutcomeKind.DEAD
    assert outcome.delay is None
    assert outcome.reason is not None
    assert outcome.reason.startswith("permanent error")
    letter = eng.dead_letters.get(f"{job_id}-pagerduty")
    assert letter is not None
    assert letter["reason"] == outcome.reason
    assert eng.jobs.get(job_id)["status"] == "dead-lettered"  # type: ignore[index]


def test_a_full_rate_window_defers_without_calling_pagerduty(
    service_env: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import get_settings

    monkeypatch.setenv("PAGERDUTY_RATE_LIMIT", "1/minute")
    get_settings.cache_clear()
    eng = engine()
    _, _, first_id, first = queued(eng, idempotency_id="e-4")
    job_id, _, task_id, payload = queued(eng, idempotency_id="e-5")
    assert step(eng, first_id, first).kind is OutcomeKind.DELIVERED
    outcome = step(eng, task_id, payload)
    assert outcome.kind is OutcomeKind.DEFERRED
    assert outcome.delay is not None
    # The window has ~60 s to go; no wait is ever as long as the visibility timeout (60 here).
    assert 50 < outcome.delay <= 0.9 * eng.settings.celery_visibility_timeout
    assert eng.jobs.get(job_id)["channels"]["pagerduty"]["state"] == "deferred"  # type: ignore[index]
    assert eng.jobs.get(job_id)["channels"]["pagerduty"]["attempts"] == 0  # type: ignore[index]
    assert len(api.events()) == 1


def test_a_delivery_another_worker_holds_is_busy(service_env: Any, api: SandboxClient) -> None:
    eng = engine()
    job_id, _, task_id, payload = queued(eng, idempotency_id="e-6")
    other = eng.locks.acquire(keys.delivery_claim(job_id, "pagerduty"), ttl=5)
    assert other is not None
    outcome = deliver(eng, payload, task_id, "pagerduty")
    assert outcome.kind is OutcomeKind.BUSY
    assert outcome.delay is not None
    assert 5 <= outcome.delay <= 6.01
    assert eng.locks.remaining(other.key) > 4  # the other worker's claim is untouched
    assert other.release()
    assert api.events() == []


def test_a_copy_that_does_not_deliver_gives_its_rate_slot_back(
    service_env: Any, api: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot is asked for in the claim's round trip: a copy that is busy or already
    delivered must not keep it, or duplicates would eat PagerDuty's rate."""
    from config.settings import get_settings
    from worker.engine.rate_limit import key_id

    monkeypatch.setenv("PAGERDUTY_RATE_LIMIT", "1/minute")
    get_settings.cache_clear()
    eng = engine()
    window = keys.rate_window(
        eng.limiter.namespace,
        key_id(eng.settings.routing_key_for(None).get_secret_value()),
    )
    job_id, _, task_id, payload = queued(eng, idempotency_id="e-slot")
    other = eng.locks.acquire(keys.delivery_claim(job_id, "pagerduty"), ttl=5)
    assert other is not None
    assert deliver(eng, payload, task_id, "pagerduty").kind is OutcomeKind.BUSY
    assert eng.redis.zcard(window) == 0
    assert other.release()

    seconds, micros = eng.redis.time()
    asked_at = seconds + micros / 1e6
    api.faults({"delay": 0.5})  # PagerDuty answers half a second after the slot was taken
    assert step(eng, task_id, payload).kind is OutcomeKind.DELIVERED
    scores: list[Any] = list(eng.redis.zrange(window, 0, -1, withscores=True))
    [(_, stamped)] = scores
    assert stamped >= asked_at + 0.5  # re-stamped when PagerDuty answered, with the record
    assert step(eng, task_id, payload).kind is OutcomeKind.SKIPPED
    assert eng.redis.zcard(window) == 1  # the skipped copy took none
    assert len(api.events()) == 1


def test_the_channel_comes_from_the_job_not_the_task(service_env: Any, api: SandboxClient) -> None:
    """A page handed to the email task is delivered and recorded as the page it is."""
    eng = engine()
    job_id, channel, task_id, payload = queued(eng, idempotency_id="e-7")
    assert channel is Channel.PAGERDUTY
    assert step(eng, task_id, payload, hint="email").kind is OutcomeKind.DELIVERED
    record = eng.jobs.get(job_id)
    assert record is not None
    assert list(record["channels"]) == ["pagerduty"]
    assert {a["channel"] for a in record["attempts"]} == {"pagerduty"}
    assert not eng.redis.hexists(keys.job(job_id), "state:email")
    assert [i["dedup_key"] for i in api.incidents()] == ["e-7"]


def test_a_payload_that_is_not_a_delivery_job_is_dead_naming_the_field(
    service_env: Any,
) -> None:
    eng = engine()
    outcome = deliver(eng, {"job_id": "x", "channel": "email", "action": "fly"}, "m-1", "email")
    assert outcome.kind is OutcomeKind.DEAD
    assert outcome.reason is not None
    assert "action: Input should be" in outcome.reason
    assert "enqueued_at: Field required" in outcome.reason
    letter = eng.dead_letters.get("m-1")
    assert letter is not None
    assert letter["channel"] == "email"
    assert {e["field"] for e in letter["last_error"]["errors"]} == {"action", "enqueued_at"}


def _lifecycle_payload(eng: Engine, job_id: str) -> tuple[str, dict[str, Any]]:
    _, payload = eng.jobs.state_and_payload(job_id, Channel.PAGERDUTY)
    assert payload is not None
    eng.redis.delete(QUEUE_OF[Channel.PAGERDUTY])  # delivered by hand below, in any order
    return f"{job_id}-pagerduty", payload


def test_events_for_one_incident_go_out_in_the_order_queued(
    service_env: Any, api: SandboxClient
) -> None:
    from worker.engine.intake import lifecycle

    eng = engine()
    _, _, trigger_id, trigger = queued(eng, idempotency_id="order-1", team="dba")
    ack_id, ack = _lifecycle_payload(
        eng, lifecycle(eng, "acknowledge", "order-1", "dba", "enqueue")
    )
    resolve_id, resolve = _lifecycle_payload(
        eng, lifecycle(eng, "resolve", "order-1", "dba", "enqueue")
    )
    # The resolve comes up first: it waits for the acknowledge, which waits for the trigger.
    waiting = step(eng, resolve_id, resolve)
    assert waiting.kind is OutcomeKind.BUSY
    assert waiting.delay == 0.5
    assert step(eng, ack_id, ack).kind is OutcomeKind.BUSY
    assert api.events() == []
    api.faults({"status": 503})
    assert step(eng, trigger_id, trigger).kind is OutcomeKind.RETRY
    slower = step(eng, ack_id, ack)  # the trigger is retrying now: a longer wait
    assert (slower.kind, slower.delay) == (OutcomeKind.BUSY, 5.0)
    api.faults({"status": 429, "retry_after": "30"})
    throttled = step(eng, trigger_id, trigger)
    assert throttled.kind is OutcomeKind.RETRY
    assert throttled.delay is not None
    assert throttled.delay >= 30
    patient = step(eng, ack_id, ack)  # until the trigger's next try, not every 5 s
    assert patient.kind is OutcomeKind.BUSY
    assert patient.delay is not None
    assert throttled.delay - 1 < patient.delay <= throttled.delay + 0.5
    # The resolve behind the waiting acknowledge waits as long, and the acknowledge's own
    # record says when it is next due (no stall for the recovery sweep meanwhile).
    behind = step(eng, resolve_id, resolve)
    assert behind.kind is OutcomeKind.BUSY
    assert behind.delay is not None
    assert patient.delay - 1 < behind.delay <= patient.delay + 1
    due = eng.redis.hget(keys.job(ack["job_id"]), "due:pagerduty")
    assert isinstance(due, str)
    assert float(due) > time.time() + 20
    eng.redis.delete(*eng.redis.keys("*:pause:*"))  # PagerDuty's 30 s, passed
    assert step(eng, trigger_id, trigger).kind is OutcomeKind.DELIVERED
    assert step(eng, resolve_id, resolve).kind is OutcomeKind.BUSY  # the ack is still queued
    assert step(eng, ack_id, ack).kind is OutcomeKind.DELIVERED
    assert step(eng, resolve_id, resolve).kind is OutcomeKind.DELIVERED
    [incident] = api.incidents()
    assert [t["action"] for t in incident["timeline"]] == ["trigger", "acknowledge", "resolve"]
    record = eng.jobs.get(resolve["job_id"])
    assert record is not None
    assert record["attempts"][0]["outcome"] == "waiting: the event queued before it is queued"
