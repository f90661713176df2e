"""Recovery of deliveries the broker lost, and the claim that keeps a second copy of a
message from delivering at the same time as the first. Real Redis, a real worker."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import tasks
from config.settings import get_settings
from sandbox import SandboxServer
from tasks.recovery import recover
from tests.conftest import SandboxClient, in_thread_worker, reconfigure, wait_for
from tests.processes import WorkerProcess, beat
from worker.celery_app import app
from worker.channels import Channel
from worker.engine import keys
from worker.engine.broker_queues import LOOK_LIMIT, UNACKED_HASH
from worker.engine.delivery import Outcome, OutcomeKind, deliver
from worker.engine.jobs import AFTER_CLAIM_SECONDS, PICKUP_SECONDS, JobStore
from worker.engine.recovery import Stalled
from worker.engine.recovery import recover as sweep
from worker.engine.runtime import engine
from worker.engine.workers import ALIVE_SECONDS
from worker.presence import BOOT


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


def moment(t: float) -> Any:
    """A moment (seconds since the epoch) to the millisecond: pytest.approx's own tolerance,
    relative, would be half an hour at today's epoch."""
    return pytest.approx(t, rel=0, abs=0.001)


def created_at(job_id: str) -> float:
    record = engine().jobs.get(job_id)
    assert record is not None
    return float(record["created_at"])


def payload_of(job_id: str) -> dict[str, Any]:
    """The page's delivery message payload, as its job record keeps it."""
    return dict(json.loads(str(broker().hget(keys.job(job_id), "payload:pagerduty"))))


def published_as_celerys_retry(job_id: str, countdown: float) -> None:
    """The page's message, published as Celery's own retry of it (with its countdown)."""
    app.send_task(
        "deliver.pagerduty",
        args=[payload_of(job_id)],
        task_id=f"{job_id}-pagerduty",
        queue="pagerduty",
        countdown=countdown,
    )


def delivered(job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The job's record, once it is delivered (waited for)."""
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered", timeout)
    record = engine().jobs.get(job_id)
    assert record is not None
    return record


def delivered_by_beats_sweep(job_id: str, tmp_path: Path, timeout: float) -> dict[str, Any]:
    """Real ``celery beat`` (a sweep every second, the rest default) and a real worker,
    until the page is delivered; its record."""
    with beat(tmp_path, JOB_RECOVERY_INTERVAL="1"), in_thread_worker():
        return delivered(job_id, timeout)


def sweep_at_pickup(job_id: str) -> list[Stalled]:
    """A sweep a second after the page's pickup look fell due."""
    return sweep(engine(), now=created_at(job_id) + PICKUP_SECONDS[Channel.PAGERDUTY] + 1)


def between_the_looks(monkeypatch: pytest.MonkeyPatch, step: Any) -> list[set[str] | None]:
    """Runs ``step`` (what a worker does meanwhile) right after the sweep's first look in
    the broker returns; what each look found, in order, fills the list returned."""
    broker_queues = engine().broker
    look = broker_queues.holding
    seen: list[set[str] | None] = []

    def looked(queue: str, task_ids: Any) -> set[str] | None:
        found = look(queue, task_ids)
        seen.append(found)
        if len(seen) == 1:
            step()
        return found

    monkeypatch.setattr(broker_queues, "holding", looked)
    return seen


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
    assert r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == moment(pickup + 300.4)

    request.getfixturevalue("celery_worker")
    record = delivered(job_id)
    assert record["attempts"][0]["outcome"] == (
        "recovered: queued, lost by the broker (on no queue, in no worker's hands) 10s after"
        " it was queued"
    )
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-1"]
    assert open_count() == 0  # delivered deliveries leave the open set
    assert float(r.hget(keys.STATS, "recovered:lost")) == 1  # type: ignore[arg-type]
    assert r.hget(keys.STATS, "recovered:stalled") is None
    r.close()


def test_a_sweeper_killed_mid_sweep_holds_recovery_up_for_two_intervals_at_most(
    service_env: SandboxServer,
) -> None:
    """Its lock lapsed after a stall period (300 s): a page-pool worker killed while it
    ran the sweep stopped every recovery for five minutes."""
    import subprocess
    import sys

    killed = (
        "import os\n"
        "from worker.engine.recovery import recover\n"
        "from worker.engine.runtime import engine\n"
        "eng = engine()\n"
        "eng.jobs.progress = lambda deliveries: os._exit(9)  # killed, the lock held\n"
        "recover(eng)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed], cwd=Path(__file__).parent.parent)
    assert done.returncode == 9
    held = engine().locks.remaining(keys.RECOVERY_LOCK)
    interval = get_settings().job_recovery_interval
    assert 0 < held <= 2 * interval < get_settings().job_stall_seconds
    assert sweep(engine()) == []  # the next sweep, meanwhile, stands aside
    engine().redis.pexpire(keys.RECOVERY_LOCK, 1)  # two intervals later
    time.sleep(0.05)
    job_id = tasks.enqueue(page(2))
    with broker() as r:
        r.delete("pagerduty")  # lost by the broker: for the sweep to find
    [found] = sweep_at_pickup(job_id)
    assert found.job_id == job_id


def test_with_the_default_settings_a_lost_page_arrives_by_beats_sweep_in_seconds(
    service_env: SandboxServer, api: SandboxClient, tmp_path: Path
) -> None:
    """Everything real: beat schedules the sweep, a worker runs it and then the page. With
    the default JOB_STALL_SECONDS (300) only the pickup look can deliver it in time."""
    job_id = tasks.enqueue(page(11))
    assert broker().delete("pagerduty") == 1  # lost in the pop window
    record = delivered_by_beats_sweep(job_id, tmp_path, 40)
    assert "lost by the broker" in record["attempts"][0]["outcome"]
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-11"]


def due_at(job_id: str, channel: str = "pagerduty") -> float:
    """When the delivery's message (its retry's) fell due at a worker."""
    return float(str(broker().hget(keys.job(job_id), f"due:{channel}")))


def a_long_retry_whose_early_copy_died(job_id: str, channel: str) -> tuple[float, float]:
    """A retry due in 400 s (a long Retry-After) that a copy of its message claimed at
    once and died in (the claim's block ends unrecorded): when it falls due, and the
    sweep's look the claim set, before that."""
    store = engine().jobs
    store.record(job_id, channel, "failed", state="retrying", counted=True, quiet_for=400)
    due = due_at(job_id, channel)
    with store.claim(job_id, channel, ttl=2.0) as claim:
        assert claim.lock is not None
    look = store.redis.zscore(keys.OPEN_DELIVERIES, f"{job_id}:{channel}")
    assert look is not None
    assert look < due
    return due, look


def step(job_id: str) -> Outcome:
    """The engine's delivery step on the page's message, run here as a worker runs it.
    With the message first taken off the queue, and no task around the step to publish
    the message that would carry it on after a countdown, that message is as good as lost
    in the pop window."""
    return deliver(engine(), payload_of(job_id), f"{job_id}-pagerduty", "pagerduty")


def test_a_retry_the_broker_lost_is_published_again_after_its_countdown_and_delivered_once(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    """The first attempt failed; the retry's message, popped when its countdown began, was
    lost: it goes out again PICKUP_SECONDS after the countdown ran out (it is due, so the
    copy has none), and the page is delivered once."""
    job_id = tasks.enqueue(page(14))
    before = time.time()
    assert broker().delete("pagerduty") == 1  # a worker took the message
    api.faults({"status": 503})
    outcome = step(job_id)
    assert (outcome.kind, outcome.delay is not None) == (OutcomeKind.RETRY, True)
    due = due_at(job_id)
    assert before + (outcome.delay or 0) <= due <= time.time() + (outcome.delay or 0)
    pickup = due + PICKUP_SECONDS[Channel.PAGERDUTY]
    assert broker().zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == moment(pickup)
    assert sweep(engine(), now=pickup - 0.5) == []

    [found] = sweep(engine(), now=pickup + 0.4)
    assert (found.job_id, found.lost) == (job_id, True)
    assert found.idle_seconds == pytest.approx(PICKUP_SECONDS[Channel.PAGERDUTY] + 0.4)
    assert broker().llen("pagerduty") == 1
    assert sweep(engine(), now=pickup + 1) == []  # looked at again a stall period later

    request.getfixturevalue("celery_worker")
    record = delivered(job_id)
    assert [(a["attempt"], a["outcome"]) for a in record["attempts"]] == [
        (1, "failed"),
        (
            None,
            "recovered: retrying, lost by the broker (on no queue, in no worker's hands) 10s"
            " after its countdown ran out",
        ),
        (2, "delivered"),
    ]
    assert [e["status"] for e in api.events()] == [503, 202]
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-14"]


def test_a_deferral_the_broker_lost_is_published_again_after_its_slot(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own rate limiter put the page aside until its slot; the message that would have
    come back then was lost."""
    monkeypatch.setenv("PAGERDUTY_RATE_LIMIT", "1/minute")
    reconfigure()
    first, second = tasks.enqueue(page(17)), tasks.enqueue(page(18))
    assert broker().delete("pagerduty") == 1  # workers took both messages
    assert step(first).kind is OutcomeKind.DELIVERED
    outcome = step(second)
    assert outcome.kind is OutcomeKind.DEFERRED
    assert outcome.delay is not None
    assert outcome.delay > 50  # the next slot of 1/minute
    due = due_at(second)
    assert sweep(engine(), now=due + 9) == []
    [found] = sweep(engine(), now=due + 11)
    assert (found.job_id, found.lost) == (second, True)
    assert broker().llen("pagerduty") == 1
    record = engine().jobs.get(second)
    assert record is not None
    assert record["attempts"][-1]["outcome"] == (
        "recovered: deferred, lost by the broker (on no queue, in no worker's hands) 11s"
        " after its countdown ran out"
    )


def test_a_retry_waiting_its_countdown_in_a_live_workers_hands_gets_no_copy_before_the_stall(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    """The retry's message Celery published (with its countdown) is held by a real worker
    until it is due, and marked as held by it. A live worker later than PICKUP_SECONDS to
    run it is not second-guessed before the stall period: the sweep looks again only when
    that worker would count as dead if it stopped saying it is up; and the stall's copy
    then is harmless."""
    job_id = tasks.enqueue(page(15))
    assert broker().delete("pagerduty") == 1
    api.faults({"status": 503})
    assert step(job_id).kind is OutcomeKind.RETRY
    assert held_by(job_id) is None  # a first attempt's message has no countdown
    published_as_celerys_retry(job_id, countdown=60)
    r = broker()
    with in_thread_worker() as worker:
        wait_for(lambda: (r.llen("pagerduty"), r.hlen("unacked")) == (0, 1))
        wait_for(lambda: held_by(job_id) == (worker.hostname, BOOT))
        due = due_at(job_id)
        member = f"{job_id}:pagerduty"
        now = due + PICKUP_SECONDS[Channel.PAGERDUTY] + 1
        holder = [(worker.hostname, BOOT)]
        for _ in range(2):  # and again at that look: it is still up
            [before] = engine().workers.silent_for(holder)
            assert sweep(engine(), now=now) == []
            [after] = engine().workers.silent_for(holder)  # (it may have reported between)
            look = r.zscore(keys.OPEN_DELIVERIES, member)
            assert look is not None
            # Dead if it stays silent until then (the second, as for a claim, for clocks).
            dead_at = now + ALIVE_SECONDS + AFTER_CLAIM_SECONDS
            assert dead_at - max(before, after) - 1 < look < dead_at - min(before, after) + 1
            now = look + 1
        assert (r.llen("pagerduty"), r.hlen("unacked")) == (0, 1)
        [found] = sweep(engine(), now=due + 301)
        assert (found.job_id, found.reason, found.holder) == (job_id, "stalled", None)
        assert found.idle_seconds == pytest.approx(301)
        delivered(job_id)
    assert held_by(job_id) is None  # the claim of the attempt cleared it
    assert [e["status"] for e in api.events()] == [503, 202]


def a_retry_in_a_workers_hands(job_id: str, api: SandboxClient) -> float:
    """The page's first attempt fails and Celery's retry of it (a minute's countdown) is
    taken by a worker: off its queue, into kombu's unacked hash. When it fell due."""
    assert broker().delete("pagerduty") == 1
    api.faults({"status": 503})
    assert step(job_id).kind is OutcomeKind.RETRY
    published_as_celerys_retry(job_id, countdown=60)
    r = broker()
    [message] = r.lrange("pagerduty", 0, -1)
    r.delete("pagerduty")
    envelope = json.loads(message)
    tag = envelope["properties"]["delivery_tag"]
    r.hset(UNACKED_HASH, tag, json.dumps([envelope, "", "pagerduty"]))
    return due_at(job_id)


HOLDER = "pagerduty-1@host-a"


@pytest.mark.parametrize(
    ("holder", "copied", "said"),
    [
        ("never said it was up", True, r"which has restarted or stopped since"),
        ("silent for 40 s", True, r"which has not said it is up for 4\ds"),
        ("restarted under its name", True, r"which has not said it is up for 4\ds"),
        ("stopped on purpose", True, r"which has restarted or stopped since"),
        ("up", False, None),
        ("up, and another process under its name too", False, None),
    ],
)
def test_a_countdown_held_by_a_worker_that_died_goes_out_at_its_pickup_look(
    service_env: SandboxServer, api: SandboxClient, holder: str, copied: bool, said: str | None
) -> None:
    """A retry's message in the hands of the worker that received it with its countdown
    (marked so): kombu would hand it back only after the visibility timeout. If that
    worker process has died since (silent for ALIVE_SECONDS, whoever reports under its
    name now), the page goes out again at its pickup look; if it is up, it is left to it."""
    job_id = tasks.enqueue(page(40))
    due = a_retry_in_a_workers_hands(job_id, api)
    workers = engine().workers
    if holder != "never said it was up":
        workers.report(HOLDER, ["pagerduty"], 1234, "boot-1")
    if holder in ("silent for 40 s", "restarted under its name"):
        broker().zadd(keys.WORKER_BOOTS, {f"boot-1 {HOLDER}": workers.now() - 40})
    if holder in ("restarted under its name", "up, and another process under its name too"):
        workers.report(HOLDER, ["pagerduty"], 5678, "boot-2")
    if holder == "stopped on purpose":
        workers.gone(HOLDER, "boot-1")
    assert engine().jobs.hold(job_id, "pagerduty", HOLDER, "boot-1")
    assert held_by(job_id) == (HOLDER, "boot-1")

    now = due + PICKUP_SECONDS[Channel.PAGERDUTY] + 1
    found = sweep(engine(), now=now)
    r = broker()
    look = r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty")
    assert look is not None
    if not copied:
        assert found == []
        assert r.llen("pagerduty") == 0
        assert now + ALIVE_SECONDS - 5 < look <= now + ALIVE_SECONDS + AFTER_CLAIM_SECONDS
        return
    [item] = found
    assert (item.job_id, item.reason, item.holder) == (job_id, "lost", HOLDER)
    assert item.idle_seconds == pytest.approx(PICKUP_SECONDS[Channel.PAGERDUTY] + 1)
    assert r.llen("pagerduty") == 1
    assert look == moment(now + 300)
    record = engine().jobs.get(job_id)
    assert record is not None
    assert re.fullmatch(
        rf"recovered: retrying, its message was in the hands of worker {HOLDER}, {said} \(it"
        r" died holding it\), 11s after it fell due",
        record["attempts"][-1]["outcome"],
    ), record["attempts"][-1]["outcome"]
    assert sweep(engine(), now=now + 1) == []  # one copy per stall period


def test_a_countdown_held_by_a_dead_worker_behind_too_many_unacked_waits_for_the_stall(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    """With more messages in workers' hands than a sweep reads through, the broker cannot
    say the dead worker still holds it: it waits for the stall period."""
    job_id = tasks.enqueue(page(45))
    due = a_retry_in_a_workers_hands(job_id, api)
    r = broker()
    r.hset(UNACKED_HASH, mapping={f"tag-{i}": "[]" for i in range(LOOK_LIMIT + 1)})
    assert engine().jobs.hold(job_id, "pagerduty", HOLDER, "boot-1")  # never said it was up
    assert sweep(engine(), now=due + PICKUP_SECONDS[Channel.PAGERDUTY] + 1) == []
    assert r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == moment(due + 300)
    assert r.llen("pagerduty") == 0


def test_a_countdown_a_worker_held_at_its_warm_shutdown_is_put_back_and_gets_no_copy(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    """A real worker stopped on purpose while it holds a retry through its countdown: kombu
    puts the message back on its queue, and the worker says it stopped. The page waits its
    turn there, and is left to it."""
    job_id = tasks.enqueue(page(46))
    assert broker().delete("pagerduty") == 1
    api.faults({"status": 503})
    assert step(job_id).kind is OutcomeKind.RETRY
    published_as_celerys_retry(job_id, countdown=60)
    r = broker()
    with in_thread_worker() as worker:
        wait_for(lambda: held_by(job_id) == (worker.hostname, BOOT))
        assert (r.llen("pagerduty"), r.hlen(UNACKED_HASH)) == (0, 1)
    assert (r.llen("pagerduty"), r.hlen(UNACKED_HASH)) == (1, 0)
    assert engine().workers.silent_for([(worker.hostname, BOOT)]) == [math.inf]
    due = due_at(job_id)
    assert sweep(engine(), now=due + PICKUP_SECONDS[Channel.PAGERDUTY] + 1) == []
    assert r.llen("pagerduty") == 1
    assert r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == moment(due + 300)


def test_a_countdown_held_by_a_dead_worker_and_put_back_on_its_queue_gets_no_copy(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    """A worker that stops on purpose gives back what it held (kombu restores its unacked
    messages to their queues): the message waits its turn there, and is left to it."""
    job_id = tasks.enqueue(page(41))
    due = a_retry_in_a_workers_hands(job_id, api)
    r = broker()
    [entry] = r.hvals(UNACKED_HASH)
    r.delete(UNACKED_HASH)
    r.lpush("pagerduty", json.dumps(json.loads(entry)[0]))
    assert engine().jobs.hold(job_id, "pagerduty", HOLDER, "boot-1")  # it never said it was up
    assert sweep(engine(), now=due + PICKUP_SECONDS[Channel.PAGERDUTY] + 1) == []
    assert r.llen("pagerduty") == 1
    look = r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty")
    assert look == moment(due + 300)


def test_only_an_open_page_is_marked_as_held_and_its_claim_clears_the_mark(
    service_env: SandboxServer,
) -> None:
    store = engine().jobs
    job_id = tasks.enqueue(page(42))
    assert store.hold(job_id, "pagerduty", HOLDER, "boot-1")
    with store.claim(job_id, "pagerduty", ttl=5.0) as claim:
        assert claim.lock is not None
        assert held_by(job_id) is None
        store.record(job_id, "pagerduty", "delivered", state="delivered", claim=claim.lock)
    assert not store.hold(job_id, "pagerduty", HOLDER, "boot-1")  # final
    assert held_by(job_id) is None
    assert not store.hold("no-such-job", "pagerduty", HOLDER, "boot-1")
    assert broker().exists(keys.job("no-such-job")) == 0  # no record without a TTL
    # Email is looked at only after the stall period, whoever holds it.
    mail = tasks.enqueue({"recipient": "ops@example.com", "subject": "disk", "priority": "low"})
    assert not store.hold(mail, "email", HOLDER, "boot-1")
    assert broker().hget(keys.job(mail), "held:email") is None


def test_a_retry_recorded_between_the_two_looks_gets_no_copy_and_keeps_its_look(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker takes the page (so the first look finds it nowhere), fails and records a
    retry before the second look: the sweep sees the record moved on, makes no copy, and
    leaves the retry's own first look where the record put it."""
    job_id = tasks.enqueue(page(19))
    assert broker().delete("pagerduty") == 1
    store = engine().jobs
    seen = between_the_looks(
        monkeypatch,
        lambda: store.record(job_id, "pagerduty", "failed", state="retrying", quiet_for=30),
    )
    assert sweep_at_pickup(job_id) == []
    assert seen == [set(), set()]
    assert broker().llen("pagerduty") == 0
    member = f"{job_id}:pagerduty"
    look = due_at(job_id) + PICKUP_SECONDS[Channel.PAGERDUTY]
    assert broker().zscore(keys.OPEN_DELIVERIES, member) == moment(look)


def test_a_countdown_longer_than_the_stall_period_outlives_a_copy_that_died(
    service_env: SandboxServer,
) -> None:
    """A retry due in 400 s (a long Retry-After); a copy of its message claims it early and
    dies in its attempt, which moves the sweep's look to just after the claim. The
    countdown stands: no copy before it runs out, and one then, for the attempt that died
    (whose message the broker would keep in the dead worker's hands)."""
    job_id = tasks.enqueue(page(20))
    assert broker().delete("pagerduty") == 1
    due, claimed_look = a_long_retry_whose_early_copy_died(job_id, "pagerduty")
    assert sweep(engine(), now=claimed_look + 1) == []
    assert broker().zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty") == moment(due + 10)
    [found] = sweep(engine(), now=due + 11)
    assert (found.job_id, found.abandoned, found.lost) == (job_id, True, False)


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
    record = delivered_by_beats_sweep(job_id, tmp_path, 45)
    assert "after its countdown ran out" in record["attempts"][1]["outcome"]
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-16"]
    assert [e["status"] for e in api.events()] == [429, 202]


def test_the_recovery_task_logs_a_lost_page_and_publishes_it(
    service_env: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = tasks.enqueue(page(7))
    r = broker()
    assert r.delete("pagerduty") == 1
    # Queued 12 s ago: its look fell due 2 s ago.
    r.hset(keys.job(job_id), "created_at", repr(time.time() - 12))
    r.zadd(keys.OPEN_DELIVERIES, {f"{job_id}:pagerduty": time.time() - 2})
    with caplog.at_level(logging.WARNING, logger="tasks.recovery"):
        assert recover.apply().get() == 1
    assert r.llen("pagerduty") == 1
    assert f"job {job_id} pagerduty: no worker took it 12 s after it fell due" in caplog.text
    assert "(the broker lost it): re-queued" in caplog.text


def test_the_recovery_task_logs_an_attempt_its_worker_died_in_and_publishes_it(
    service_env: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = tasks.enqueue(page(8))
    r = broker()
    store = engine().jobs
    r.hset(keys.job(job_id), "created_at", repr(time.time() - 12))  # past its pickup look
    with store.claim(job_id, "pagerduty", ttl=0.2) as claim:  # its block ends unrecorded
        assert claim.lock is not None
    time.sleep(0.2 + AFTER_CLAIM_SECONDS + 0.1)  # the claim lapsed, and the look fell due
    with caplog.at_level(logging.WARNING, logger="tasks.recovery"):
        assert recover.apply().get() == 1
    assert r.llen("pagerduty") == 2  # the message enqueue published, and the copy
    assert re.search(
        rf"job {job_id} pagerduty: an attempt begun \d+ s ago recorded no outcome and its "
        r"claim lapsed \(its worker died\?\): re-queued",
        caplog.text,
    ), caplog.text
    record = store.get(job_id)
    assert record is not None
    assert re.fullmatch(
        r"recovered: queued, its worker stopped in an attempt begun \d+s ago \(its claim "
        r"lapsed, no outcome recorded\)",
        record["attempts"][-1]["outcome"],
    )


def test_the_recovery_task_logs_a_countdown_a_dead_worker_held_and_publishes_it(
    service_env: SandboxServer, api: SandboxClient, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = tasks.enqueue(page(43))
    a_retry_in_a_workers_hands(job_id, api)
    r = broker()
    # Its countdown ran out 12 s ago: its look fell due 2 s ago.
    r.hset(keys.job(job_id), "due:pagerduty", repr(time.time() - 12))
    r.zadd(keys.OPEN_DELIVERIES, {f"{job_id}:pagerduty": time.time() - 2})
    assert engine().jobs.hold(job_id, "pagerduty", HOLDER, "boot-1")
    with caplog.at_level(logging.WARNING, logger="tasks.recovery"):
        assert recover.apply().get() == 1
    assert r.llen("pagerduty") == 1
    assert (
        f"job {job_id} pagerduty: its message was in the hands of worker {HOLDER}, which has"
        " died or restarted since, 12 s after it fell due: re-queued"
    ) in caplog.text


def test_a_page_waiting_its_turn_on_the_queue_is_left_alone_until_the_stall_period(
    service_env: SandboxServer,
) -> None:
    job_id = tasks.enqueue(page(8))
    r = broker()
    created = created_at(job_id)
    assert sweep_at_pickup(job_id) == []
    assert r.llen("pagerduty") == 1  # no copy
    member = f"{job_id}:pagerduty"
    assert r.zscore(keys.OPEN_DELIVERIES, member) == moment(created + 300)
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
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu pops a message, then records it as unacked: for that moment it is in neither.
    Here the second step lands right after the sweep's first look, which saw nothing."""
    job_id = tasks.enqueue(page(12))
    r = broker()
    [message] = r.lrange("pagerduty", 0, -1)
    r.delete("pagerduty")
    envelope = json.loads(message)
    tag, entry = envelope["properties"]["delivery_tag"], json.dumps([envelope, "", "pagerduty"])
    seen = between_the_looks(monkeypatch, lambda: r.hset("unacked", tag, entry))
    try:
        assert sweep_at_pickup(job_id) == []
        assert seen == [set(), {f"{job_id}-pagerduty"}]
        assert r.llen("pagerduty") == 0
    finally:
        r.delete("unacked")


def test_a_retry_message_celery_published_is_found(service_env: SandboxServer) -> None:
    """The look reads Celery's own messages too (a retry's, with its countdown), not only
    the ones the engine writes."""
    job_id = tasks.enqueue(page(13))
    r = broker()
    r.delete("pagerduty")
    published_as_celerys_retry(job_id, countdown=30)
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
        assert r.zscore(keys.OPEN_DELIVERIES, member) == moment(created + 300)
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
    assert r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:email") == moment(created + 300)
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
    delivered(job_id)
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
    assert store.redis.zscore(keys.OPEN_DELIVERIES, member) == moment(due + 10)
    assert sweep(engine()) == []
    assert store.redis.zrange(keys.OPEN_DELIVERIES, 0, -1) == [member]
    # Its message is on the queue (as a retry's would be): no copy at the look.
    assert sweep(engine(), now=due + 11) == []
    assert store.redis.zscore(keys.OPEN_DELIVERIES, member) == moment(due + 300)

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
    record = delivered(job_id, 20)
    outcomes = [a["outcome"] for a in record["attempts"]]
    assert outcomes[0] == "waiting: in another worker's hands"
    assert outcomes[-1] == "delivered"
    sent = [e for e in api.events() if e["status"] == 202]
    assert len(sent) == 1
    assert sent[0]["at"] >= taken_at + 1.9  # not before the other worker's claim ran out
    assert store.redis.exists(keys.delivery_claim(job_id, "pagerduty")) == 0  # released
    with store.claim(job_id, "pagerduty", ttl=2.0) as claim:  # never again
        assert (claim.state, claim.lock, claim.final) == ("delivered", None, True)


def held_by(job_id: str) -> tuple[str, str] | None:
    """The worker (hostname, boot) marked as holding the page through a countdown."""
    [p] = engine().jobs.progress([(job_id, "pagerduty")])
    return p.held_by


def mark_of(job_id: str, channel: str = "pagerduty") -> str | None:
    """The claim token that marked the delivery as taken, if a mark is there."""
    mark = broker().hget(keys.job(job_id), f"taken:{channel}")
    return None if mark is None else str(mark).split()[0]


def test_an_attempt_is_marked_taken_from_its_claim_until_its_own_record(
    service_env: SandboxServer,
) -> None:
    """The mark the sweep tells a dead worker's attempt by: set with the claim, cleared by
    that attempt's record even after its claim lapsed, and never by another attempt's."""
    job_id = tasks.enqueue(page(30))
    store = engine().jobs
    delivery = [(job_id, "pagerduty")]
    began = time.time()
    with store.claim(job_id, "pagerduty", ttl=5.0) as claim:
        assert claim.lock is not None
        assert mark_of(job_id) == claim.lock.token
        [p] = store.progress(delivery)
        assert p.claimed
        assert 0 < p.claim_left <= 5
        taken_at = p.taken_at
        assert taken_at is not None
        assert began <= taken_at <= time.time()
        assert not p.abandoned
        # The sweep's look waits for the claim to lapse, a second more for the clocks.
        look = store.redis.zscore(keys.OPEN_DELIVERIES, f"{job_id}:pagerduty")
        assert look == pytest.approx(taken_at + 5 + AFTER_CLAIM_SECONDS, abs=0.001)
        store.record(
            job_id, "pagerduty", "failed", state="retrying", quiet_for=60, claim=claim.lock
        )
    [p] = store.progress(delivery)
    assert (p.claimed, p.taken_at, p.abandoned) == (False, None, False)

    # An attempt that outlasts its claim and then records: its own mark goes with it.
    with store.claim(job_id, "pagerduty", ttl=0.2) as slow:
        assert slow.lock is not None
        time.sleep(0.3)
        assert store.claim_remaining(job_id, "pagerduty") == 0
        store.record(job_id, "pagerduty", "failed", state="retrying", claim=slow.lock)
    assert mark_of(job_id) is None

    # One that outlasts its claim while another copy claims the delivery: its late record
    # leaves the other copy's mark (and claim) alone.
    with store.claim(job_id, "pagerduty", ttl=0.2) as late:
        assert late.lock is not None
        time.sleep(0.3)
        with store.claim(job_id, "pagerduty", ttl=5.0) as second:
            assert second.lock is not None
            store.record(job_id, "pagerduty", "failed", state="retrying", claim=late.lock)
            assert mark_of(job_id) == second.lock.token
            assert store.claim_remaining(job_id, "pagerduty") > 0
    # The second copy's block ends with no record: it died in its attempt.
    [p] = store.progress(delivery)
    assert p.abandoned


def test_an_email_whose_worker_died_in_its_attempt_waits_a_stall_period_after_its_claim(
    service_env: SandboxServer,
) -> None:
    """An email attempt can outlast its claim on a live worker (aiosmtplib's timeout is per
    reply), and a copy would send it twice: email is looked at a stall period after its
    claim, not when the claim lapses; then it goes out as abandoned."""
    job_id = tasks.enqueue({"recipient": "ops@example.com", "subject": "disk", "priority": "low"})
    store = engine().jobs
    member = f"{job_id}:email"
    with store.claim(job_id, "email", ttl=0.2) as claim:  # its block ends unrecorded
        assert claim.lock is not None
    [p] = store.progress([(job_id, "email")])
    taken_at = p.taken_at
    assert taken_at is not None
    look = store.redis.zscore(keys.OPEN_DELIVERIES, member)
    assert look is not None
    assert look == pytest.approx(taken_at + 0.2 + 300, abs=0.001)
    assert sweep(engine(), now=taken_at + 100) == []
    [found] = sweep(engine(), now=look + 1)
    assert (found.job_id, found.channel, found.reason) == (job_id, "email", "abandoned")

    # One whose worker still holds its claim at the look (a long SMTP_DATA_TIMEOUT): left
    # to it, and looked at again a stall period after that claim would lapse.
    held = tasks.enqueue({"recipient": "ops@example.com", "subject": "lag", "priority": "low"})
    with store.claim(held, "email", ttl=600) as claim:
        assert claim.lock is not None
        first = store.redis.zscore(keys.OPEN_DELIVERIES, f"{held}:email")
        assert first is not None
        assert held not in [item.job_id for item in sweep(engine(), now=first + 1)]
        again = store.redis.zscore(keys.OPEN_DELIVERIES, f"{held}:email")
        assert again == pytest.approx(first + 1 + 600 + 300, abs=2)


def test_an_email_retry_whose_early_copy_died_goes_out_when_its_countdown_runs_out(
    service_env: SandboxServer,
) -> None:
    """A retry due in 400 s, longer than the stall period; a copy claims it early and dies
    in its attempt. The sweep's look a stall period after that claim is before the
    countdown runs out: it goes back to the moment it does (not a stall period after it,
    which is an email's first look), and the copy goes out then."""
    job_id = tasks.enqueue({"recipient": "ops@example.com", "subject": "disk", "priority": "low"})
    due, look = a_long_retry_whose_early_copy_died(job_id, "email")
    assert sweep(engine(), now=look + 1) == []
    assert broker().zscore(keys.OPEN_DELIVERIES, f"{job_id}:email") == moment(due)
    [found] = sweep(engine(), now=due + 1)
    assert (found.job_id, found.reason) == (job_id, "abandoned")


def test_a_delivery_in_a_workers_claim_at_the_look_is_left_to_it_until_the_claim_lapses(
    service_env: SandboxServer,
) -> None:
    """A sweeper whose clock runs ahead (or a look read while the claim was still held)
    finds the claim held: no copy, and the next look once the claim would have lapsed."""
    job_id = tasks.enqueue(page(31))
    store = engine().jobs
    member = f"{job_id}:pagerduty"
    with store.claim(job_id, "pagerduty", ttl=5.0) as claim:
        assert claim.lock is not None
        look = store.redis.zscore(keys.OPEN_DELIVERIES, member)
        assert look is not None
        ahead = look + 100
        assert sweep(engine(), now=ahead) == []
        assert broker().llen("pagerduty") == 1  # only the message enqueue published
        moved = store.redis.zscore(keys.OPEN_DELIVERIES, member)
        assert moved is not None
        # Where the claim's time left puts it (it had at most 5 s left).
        assert ahead + AFTER_CLAIM_SECONDS < moved <= ahead + 5 + AFTER_CLAIM_SECONDS


def test_a_page_whose_worker_died_in_its_attempt_goes_out_once_its_claim_lapses(
    service_env: SandboxServer,
    api: SandboxClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real worker process is SIGKILLed while PagerDuty has not answered its POST yet.
    The page's message stays in that worker's entry of kombu's unacked hash, which only the
    visibility timeout (an hour here, the default) would hand back, and which the sweep's
    look in the broker takes for a page in a worker's hands. Once the claim has lapsed
    (2 x PAGERDUTY_TIMEOUT + 5 = 15 s) beat's sweep publishes it again and it is delivered
    once: in seconds, not after the stall period (the default, 300 s)."""
    # A timeout the test's kill lands well inside, loaded machine or not: a worker that
    # timed out would record the failure, and be no dead worker's attempt.
    monkeypatch.setenv("PAGERDUTY_TIMEOUT", "5")
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "3600")
    reconfigure()
    assert get_settings().job_stall_seconds == 300
    api.faults({"delay": 8})  # the killed worker's POST: answered after it is gone
    job_id = tasks.enqueue(page(32))
    worker = WorkerProcess(tmp_path / "worker.log", "-P", "threads", "-c", "2", "-Q", "pagerduty")
    try:
        worker.start()
        # Its POST is at the emulator, held there by the fault.
        wait_for(lambda: api.http.get("/sandbox/faults").json()["injected"] == 1)
        assert mark_of(job_id) is not None
        worker.kill()
    finally:
        worker.stop()
    killed_at = time.time()
    assert broker().hlen(UNACKED_HASH) == 1  # in the dead worker's hands for the hour
    assert engine().jobs.claim_remaining(job_id, "pagerduty") > 5

    record = delivered_by_beats_sweep(job_id, tmp_path, timeout=40)
    assert time.time() - killed_at < 40
    outcomes = [a["outcome"] for a in record["attempts"]]
    assert len(outcomes) == 2, outcomes
    assert outcomes[0].startswith("recovered: queued, its worker stopped in an attempt begun")
    assert outcomes[1] == "delivered"
    assert record["channels"]["pagerduty"]["attempts"] == 1  # the killed attempt never ended
    # The copy was sent once; the dead worker's POST, held by the fault, at most once more.
    posts = [e for e in api.events() if (e["body"] or {}).get("dedup_key") == "recover-32"]
    assert [e["status"] for e in posts if e["fault"] is None] == [202]
    assert len(posts) <= 2
    assert len(api.incidents(dedup_key="recover-32")) == 1


def test_a_page_whose_worker_died_holding_its_countdown_goes_out_once_it_counts_as_dead(
    service_env: SandboxServer,
    api: SandboxClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real worker process is throttled (429, Retry-After 20 s), publishes the retry,
    receives it back with its countdown, and is SIGKILLed holding it. The message stays in
    that worker's entry of kombu's unacked hash for the visibility timeout (an hour here,
    the default). Once the countdown has run out and the worker has not said it is up for
    ALIVE_SECONDS, beat's sweep publishes it again and it is delivered once: well within
    a minute of the kill, not after the stall period (the default, 300 s)."""
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "3600")
    reconfigure()
    assert get_settings().job_stall_seconds == 300
    api.faults({"status": 429, "retry_after": "20"})
    job_id = tasks.enqueue(page(44))
    worker = WorkerProcess(tmp_path / "worker.log", "-P", "threads", "-c", "2", "-Q", "pagerduty")
    try:
        worker.start()
        # Holding the retry, and done with the throttled attempt (acknowledged).
        r = broker()
        wait_for(lambda: held_by(job_id) is not None and r.hlen(UNACKED_HASH) == 1, 30)
        worker.kill()
    finally:
        worker.stop()
    killed_at = time.time()
    assert due_at(job_id) > killed_at  # killed before its countdown ran out
    holder = held_by(job_id)
    assert holder is not None
    assert holder[1] != BOOT  # that worker process's own boot, not this one's
    assert broker().hlen(UNACKED_HASH) == 1  # in the dead worker's hands for the hour

    record = delivered_by_beats_sweep(job_id, tmp_path, timeout=60)
    assert time.time() - killed_at < 60
    outcomes = [a["outcome"] for a in record["attempts"]]
    assert len(outcomes) == 3, outcomes
    assert outcomes[0] == "failed"
    assert re.fullmatch(
        rf"recovered: retrying, its message was in the hands of worker"
        rf" {re.escape(holder[0])}, which has not said it is up for \d+s \(it died holding"
        r" it\), \d+s after it fell due",
        outcomes[1],
    ), outcomes[1]
    assert outcomes[2] == "delivered"
    assert [e["status"] for e in api.events()] == [429, 202]
    assert len(api.incidents(dedup_key="recover-44")) == 1
