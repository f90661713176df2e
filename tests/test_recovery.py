"""Recovery of deliveries the broker lost, and the claim that keeps a second copy of a
message from delivering at the same time as the first. Real Redis, a real worker."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import tasks
from config.settings import get_settings
from sandbox import SandboxServer
from tasks.recovery import recover
from tests.conftest import SandboxClient, in_thread_worker, wait_for
from tests.processes import beat
from worker.celery_app import app
from worker.channels import Channel
from worker.engine import keys
from worker.engine.broker_queues import LOOK_LIMIT
from worker.engine.delivery import OutcomeKind, deliver
from worker.engine.jobs import PICKUP_SECONDS, JobStore
from worker.engine.recovery import Stalled
from worker.engine.recovery import recover as sweep
from worker.engine.runtime import engine


@pytest.fixture
def api(service_env: SandboxServer) -> Any:
    client = SandboxClient(service_env)
    yield client
    client.close()


def page(n: int) -> dict[str, Any]:
    return {
        "recipient": "db-7",
        "subject": f"disk full {n}",
        "priority": "critical",
        "idempotency_id": f"recover-{n}",
    }


def broker() -> redis.Redis:
    from config.settings import get_settings

    return redis.Redis.from_url(get_settings().redis_url, decode_responses=True)


def open_count(store: JobStore | None = None) -> int:
    """Deliveries not yet delivered or dead-lettered."""
    return int((store or engine().jobs).redis.zcard(keys.OPEN_DELIVERIES))


def time_passes(store: JobStore) -> None:
    """Every open delivery's stall deadline is now in the past."""
    members = [str(m) for m in store.redis.zrange(keys.OPEN_DELIVERIES, 0, -1)]
    store.redis.zadd(keys.OPEN_DELIVERIES, dict.fromkeys(members, 0))


def created_at(job_id: str) -> float:
    record = engine().jobs.get(job_id)
    assert record is not None
    return float(record["created_at"])


def sweep_at_pickup(job_id: str) -> list[Stalled]:
    """A sweep a second after the page's pickup look fell due."""
    return sweep(engine(), now=created_at(job_id) + PICKUP_SECONDS[Channel.PAGERDUTY] + 1)


def test_a_page_the_broker_lost_is_published_again_at_its_pickup_look_and_delivered_once(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    """Lost in kombu's pop window (taken off the queue, never recorded as unacked): the
    page goes out again PICKUP_SECONDS after it was queued, not a stall period later."""
    assert get_settings().job_stall_seconds == 300  # the default: the stall path is far off
    job_id = tasks.enqueue(page(1))
    r = broker()
    assert r.delete("pagerduty") == 1  # the broker loses the only copy of the message
    store = engine().jobs
    assert open_count(store) == 1
    assert recover.apply().get() == 0  # not due for a look yet: nothing to do
    pickup = created_at(job_id) + PICKUP_SECONDS[Channel.PAGERDUTY]
    assert sweep(engine(), now=pickup - 0.5) == []

    [found] = sweep(engine(), now=pickup + 0.4)
    assert (found.job_id, found.lost) == (job_id, True)
    assert found.idle_seconds == pytest.approx(PICKUP_SECONDS[Channel.PAGERDUTY] + 0.4)
    assert r.llen("pagerduty") == 1  # one copy
    assert sweep(engine(), now=pickup + 1) == []  # looked at again a stall period later
    assert r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == pytest.approx(pickup + 300.4)

    request.getfixturevalue("celery_worker")
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered")
    record = engine().jobs.get(job_id)
    assert record is not None
    assert record["attempts"][0]["outcome"] == (
        "recovered: queued, lost by the broker (on no queue, in no worker's hands) 10s after"
        " it was queued"
    )
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-1"]
    assert open_count() == 0  # delivered deliveries leave the open set
    assert float(r.hget(keys.STATS, "recovered:lost")) == 1  # type: ignore[arg-type]
    assert r.hget(keys.STATS, "recovered:stalled") is None
    r.close()


def test_with_the_default_settings_a_lost_page_arrives_by_beats_sweep_in_seconds(
    service_env: SandboxServer, api: SandboxClient, tmp_path: Path
) -> None:
    """Everything real: beat schedules the sweep, a worker runs it and then the page. With
    the default JOB_STALL_SECONDS (300) only the pickup look can deliver it in time."""
    job_id = tasks.enqueue(page(11))
    assert broker().delete("pagerduty") == 1  # lost in the pop window
    with beat(tmp_path, JOB_RECOVERY_INTERVAL="1"), in_thread_worker():
        wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered", 40)
    record = engine().jobs.get(job_id)
    assert record is not None
    assert "lost by the broker" in record["attempts"][0]["outcome"]
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-11"]


def due_at(job_id: str) -> float:
    """When the page's message (its retry's) fell due at a worker."""
    return float(str(broker().hget(keys.job(job_id), "due:pagerduty")))


def failed_attempt_whose_retry_is_lost(job_id: str, api: SandboxClient) -> float:
    """A worker takes the page's message and its attempt fails (503, worth a retry); the
    retry's message is then lost in the pop window. The engine's own step runs here, as a
    worker runs it; the task that would publish the retry never runs. Returns the delay."""
    r = broker()
    assert r.delete("pagerduty") == 1  # the worker took the message off the queue
    api.faults({"status": 503})
    payload = json.loads(str(r.hget(keys.job(job_id), "payload:pagerduty")))
    outcome = deliver(engine(), payload, f"{job_id}-pagerduty", "pagerduty")
    assert (outcome.kind, outcome.again) == (OutcomeKind.RETRY, True)
    assert outcome.delay is not None
    return outcome.delay


def test_a_retry_the_broker_lost_is_published_again_after_its_countdown_and_delivered_once(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    """The first attempt failed; the retry's message, popped when its countdown began, was
    lost: it goes out again PICKUP_SECONDS after the countdown ran out, with none of its
    own (it is due), and the page is delivered once."""
    job_id = tasks.enqueue(page(14))
    before = time.time()
    delay = failed_attempt_whose_retry_is_lost(job_id, api)
    due = due_at(job_id)
    assert before + delay <= due <= time.time() + delay
    pickup = due + PICKUP_SECONDS[Channel.PAGERDUTY]
    assert broker().zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == pytest.approx(pickup)
    assert sweep(engine(), now=pickup - 0.5) == []

    [found] = sweep(engine(), now=pickup + 0.4)
    assert (found.job_id, found.lost) == (job_id, True)
    assert found.idle_seconds == pytest.approx(PICKUP_SECONDS[Channel.PAGERDUTY] + 0.4)
    [copy] = broker().lrange("pagerduty", 0, -1)
    assert json.loads(copy)["headers"].get("eta") is None  # due now: no countdown
    assert sweep(engine(), now=pickup + 1) == []  # looked at again a stall period later

    request.getfixturevalue("celery_worker")
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered")
    record = engine().jobs.get(job_id)
    assert record is not None
    assert [(a["attempt"], a["outcome"]) for a in record["attempts"]] == [
        (1, "failed"),
        (
            None,
            "recovered: retrying, lost by the broker (on no queue, in no worker's hands) 10s"
            " after its retry was due",
        ),
        (2, "delivered"),
    ]
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-14"]


def test_a_retry_waiting_its_countdown_in_a_workers_hands_gets_no_copy_before_the_stall(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    """The retry's message Celery published (with its countdown) is held by a worker
    until it is due; a worker slower than PICKUP_SECONDS to run it is not second-guessed
    before the stall period."""
    job_id = tasks.enqueue(page(15))
    failed_attempt_whose_retry_is_lost(job_id, api)
    payload = json.loads(str(broker().hget(keys.job(job_id), "payload:pagerduty")))
    with app.connection_for_write() as connection:
        app.send_task(
            "deliver.pagerduty",
            args=[payload],
            task_id=f"{job_id}-pagerduty",
            queue="pagerduty",
            countdown=1,
            connection=connection,
        )
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get("pagerduty", no_ack=False)
        assert message is not None  # in kombu's unacked hash, as a worker holds it
        due = due_at(job_id)
        assert sweep(engine(), now=due + PICKUP_SECONDS[Channel.PAGERDUTY] + 1) == []
        member = f"{job_id}:pagerduty"
        assert broker().zscore(keys.OPEN_DELIVERIES, member) == pytest.approx(due + 300)
        assert broker().llen("pagerduty") == 0
        [found] = sweep(engine(), now=due + 301)
        assert (found.job_id, found.lost) == (job_id, False)
        assert found.idle_seconds == pytest.approx(301)
        message.ack()


def test_with_the_default_settings_a_lost_retry_arrives_by_beats_sweep_in_seconds(
    service_env: SandboxServer, api: SandboxClient, tmp_path: Path
) -> None:
    """A real worker's first attempt is throttled (429, Retry-After 5 s) and it publishes
    the retry; the worker stops and the retry's message is lost. beat's sweep and a new
    worker deliver the page seconds after the countdown, not a stall period later."""
    api.faults({"status": 429, "retry_after": "5"})
    job_id = tasks.enqueue(page(16))
    r = broker()
    with in_thread_worker():
        wait_for(lambda: r.hget(keys.job(job_id), "state:pagerduty") == "retrying")
    assert r.delete("pagerduty") + r.delete("unacked") >= 1  # the retry's message, lost
    assert time.time() < due_at(job_id)  # before its countdown ran out
    with beat(tmp_path, JOB_RECOVERY_INTERVAL="1"), in_thread_worker():
        wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered", 45)
    record = engine().jobs.get(job_id)
    assert record is not None
    assert "after its retry was due" in record["attempts"][1]["outcome"]
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-16"]
    assert [e["status"] for e in api.events()] == [429, 202]


def test_the_recovery_task_logs_a_lost_page_and_publishes_it(
    service_env: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = tasks.enqueue(page(7))
    assert broker().delete("pagerduty") == 1
    time_passes(engine().jobs)  # its look is due now
    with caplog.at_level(logging.WARNING, logger="tasks.recovery"):
        assert recover.apply().get() == 1
    assert broker().llen("pagerduty") == 1
    assert f"job {job_id} pagerduty: no worker took it 0 s after it fell due" in caplog.text
    assert "(the broker lost it): re-queued" in caplog.text


def test_a_page_waiting_its_turn_on_the_queue_is_left_alone_until_the_stall_period(
    service_env: SandboxServer,
) -> None:
    job_id = tasks.enqueue(page(8))
    r = broker()
    created = created_at(job_id)
    assert sweep_at_pickup(job_id) == []
    assert r.llen("pagerduty") == 1  # no copy
    member = f"{job_id}:pagerduty"
    assert r.zscore(keys.OPEN_DELIVERIES, member) == pytest.approx(created + 300)
    assert sweep(engine(), now=created + 299) == []
    # Past the stall period a copy goes out whatever the queue holds (every worker may be
    # stuck): the claim and the record make it harmless.
    [found] = sweep(engine(), now=created + 301)
    assert (found.job_id, found.lost) == (job_id, False)
    assert r.llen("pagerduty") == 2


def test_a_page_in_a_workers_hands_is_not_published_again(service_env: SandboxServer) -> None:
    """kombu itself takes the message as a worker does (off the queue, into its unacked
    hash, not acknowledged): the look finds it there."""
    job_id = tasks.enqueue(page(9))
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        message = channel.basic_get("pagerduty", no_ack=False)
        assert message is not None
        assert message.headers["id"] == f"{job_id}-pagerduty"
        r = broker()
        assert (r.llen("pagerduty"), r.hlen("unacked")) == (0, 1)
        assert sweep_at_pickup(job_id) == []
        assert (r.llen("pagerduty"), r.hlen("unacked")) == (0, 1)
        message.ack()
        assert r.hlen("unacked") == 0


def test_a_page_a_worker_is_taking_at_the_moment_of_the_look_is_not_published_again(
    service_env: SandboxServer,
) -> None:
    """kombu pops a message, then records it as unacked: for that moment it is in neither.
    Here the second step comes 0.2 s after the first look, as from a busy worker."""
    job_id = tasks.enqueue(page(12))
    r = broker()
    [message] = r.lrange("pagerduty", 0, -1)
    r.delete("pagerduty")
    envelope = json.loads(message)
    lands = threading.Timer(
        0.2,
        r.hset,
        (
            "unacked",
            envelope["properties"]["delivery_tag"],
            json.dumps([envelope, "", "pagerduty"]),
        ),
    )
    lands.start()
    try:
        assert sweep_at_pickup(job_id) == []
        assert r.llen("pagerduty") == 0
    finally:
        lands.join()
        r.delete("unacked")


def test_a_retry_message_celery_published_is_found(service_env: SandboxServer) -> None:
    """The look reads Celery's own messages too (a retry's, with its countdown), not only
    the ones the engine writes."""
    job_id = tasks.enqueue(page(13))
    r = broker()
    payload = json.loads(str(r.hget(keys.job(job_id), "payload:pagerduty")))
    r.delete("pagerduty")
    app.send_task(
        "deliver.pagerduty",
        args=[payload],
        task_id=f"{job_id}-pagerduty",
        queue="pagerduty",
        countdown=30,
    )
    try:
        assert r.llen("pagerduty") == 1
        assert sweep_at_pickup(job_id) == []
        assert r.llen("pagerduty") == 1
    finally:
        r.delete("pagerduty")


@pytest.mark.parametrize("crowded", ["pagerduty", "unacked"])
def test_a_queue_or_unacked_hash_too_long_to_read_through_is_taken_to_hold_the_page(
    service_env: SandboxServer, crowded: str
) -> None:
    """Too many messages to read through on every sweep: the page, lost or not, then waits
    for the stall period."""
    job_id = tasks.enqueue(page(10))
    r = broker()
    assert r.delete("pagerduty") == 1
    if crowded == "pagerduty":
        r.lpush("pagerduty", *[f"filler {i}" for i in range(LOOK_LIMIT + 1)])
    else:
        r.hset("unacked", mapping={f"tag-{i}": "[]" for i in range(LOOK_LIMIT + 1)})
    try:
        assert sweep_at_pickup(job_id) == []
        created = created_at(job_id)
        member = f"{job_id}:pagerduty"
        assert r.zscore(keys.OPEN_DELIVERIES, member) == pytest.approx(created + 300)
        [found] = sweep(engine(), now=created + 301)
        assert (found.job_id, found.lost) == (job_id, False)
    finally:
        r.delete(crowded)


def test_email_is_looked_at_only_after_the_stall_period(service_env: SandboxServer) -> None:
    job_id = tasks.enqueue(
        {"recipient": "ops@example.com", "subject": "disk 80%", "priority": "low"}
    )
    r = broker()
    assert r.delete("email") == 1
    created = created_at(job_id)
    assert r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:email") == pytest.approx(created + 300)
    assert sweep(engine(), now=created + 299) == []
    [found] = sweep(engine(), now=created + 301)
    assert (found.job_id, found.channel, found.lost) == (job_id, "email", False)


def test_a_copy_of_a_message_still_queued_is_harmless(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    """Past the stall period the sweep publishes a copy even of a message still queued;
    when the original was only slow, both run and the one that comes second finds the job
    delivered."""
    job_id = tasks.enqueue(page(2))
    assert len(sweep(engine(), now=created_at(job_id) + 301)) == 1
    assert broker().llen("pagerduty") == 2

    request.getfixturevalue("celery_worker")
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered")
    wait_for(lambda: broker().llen("pagerduty") == 0)
    time.sleep(0.5)
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-2"]
    assert len([e for e in api.events() if e["status"] == 202]) == 1


def test_sweep_drops_finished_and_expired_entries_and_progress_postpones_it(
    service_env: SandboxServer,
) -> None:
    store = engine().jobs
    done = tasks.enqueue(page(3))
    gone = tasks.enqueue(page(4))
    busy = tasks.enqueue(page(5))
    store.record(done, "pagerduty", "delivered", state="delivered")
    store.redis.delete(keys.job(gone))  # expired record
    assert store.redis.zscore(keys.OPEN_DELIVERIES, f"{done}:pagerduty") is None
    store.redis.zadd(keys.OPEN_DELIVERIES, {f"{gone}:pagerduty": 0, f"{busy}:pagerduty": 0})

    store.record(busy, "pagerduty", "failed", state="retrying", quiet_for=100)  # progress
    due = due_at(busy)
    assert due > time.time() + 99
    member = f"{busy}:pagerduty"
    assert store.redis.zscore(keys.OPEN_DELIVERIES, member) == pytest.approx(due + 10)
    assert sweep(engine()) == []
    assert store.redis.zrange(keys.OPEN_DELIVERIES, 0, -1) == [member]
    # Its message is on the queue (as a retry's would be): no copy at the look.
    assert sweep(engine(), now=due + 11) == []
    assert store.redis.zscore(keys.OPEN_DELIVERIES, member) == pytest.approx(due + 300)

    found = sweep(engine(), now=due + 301)
    assert [(s.job_id, s.channel) for s in found] == [(busy, "pagerduty")]
    assert found[0].payload["job_id"] == busy
    # Still beyond any wait it was entitled to: the stall period, and one second more.
    assert found[0].idle_seconds == pytest.approx(get_settings().job_stall_seconds + 1)


def test_a_second_copy_waits_while_another_worker_holds_the_delivery(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    job_id = tasks.enqueue(page(6))
    store = engine().jobs
    # "Another worker" has it, and never lets go: its claim runs out after 2 s.
    held = engine().locks.acquire(keys.delivery_claim(job_id, "pagerduty"), ttl=2.0)
    assert held is not None
    with store.claim(job_id, "pagerduty", ttl=2.0) as claim:
        assert (claim.state, claim.lock, claim.busy) == ("queued", None, True)
    taken_at = time.time()

    request.getfixturevalue("celery_worker")
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered", timeout=20)
    record = engine().jobs.get(job_id)
    assert record is not None
    outcomes = [a["outcome"] for a in record["attempts"]]
    assert outcomes[0] == "waiting: in another worker's hands"
    assert outcomes[-1] == "delivered"
    sent = [e for e in api.events() if e["status"] == 202]
    assert len(sent) == 1
    assert sent[0]["at"] >= taken_at + 1.9  # not before the other worker's claim ran out
    assert store.redis.exists(keys.delivery_claim(job_id, "pagerduty")) == 0  # released
    with store.claim(job_id, "pagerduty", ttl=2.0) as claim:  # never again
        assert (claim.state, claim.lock, claim.final) == ("delivered", None, True)
