"""Recovery of deliveries the broker lost, and the claim that keeps a second copy of a
message from delivering at the same time as the first. Real Redis, a real worker."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

import tasks
from config.settings import get_settings
from sandbox import SandboxServer
from tasks.recovery import recover
from tests.conftest import SandboxClient, wait_for
from worker.engine import keys
from worker.engine.jobs import JobStore
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


def test_a_message_the_broker_lost_is_published_again_and_delivered_once(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    job_id = tasks.enqueue(page(1))
    r = broker()
    assert r.delete("pagerduty") == 1  # the broker loses the only copy of the message
    store = engine().jobs
    assert open_count(store) == 1
    assert recover.apply().get() == 0  # not stalled yet: nothing to do

    time_passes(store)
    assert recover.apply().get() == 1
    assert recover.apply().get() == 0  # claimed by that sweep: not re-queued twice

    request.getfixturevalue("celery_worker")
    wait_for(lambda: (engine().jobs.get(job_id) or {}).get("status") == "delivered")
    record = engine().jobs.get(job_id)
    assert record is not None
    assert any(a["outcome"].startswith("recovered: queued") for a in record["attempts"])
    assert [i["dedup_key"] for i in api.incidents()] == ["recover-1"]
    assert open_count() == 0  # delivered deliveries leave the open set
    assert float(r.hget(keys.STATS, "recovered")) == 1  # type: ignore[arg-type]
    r.close()


def test_a_copy_of_a_message_still_queued_is_harmless(
    service_env: SandboxServer, api: SandboxClient, request: pytest.FixtureRequest
) -> None:
    """The sweep cannot see the queue; when the original was only slow, both run and the
    one that comes second finds the job delivered."""
    job_id = tasks.enqueue(page(2))
    time_passes(engine().jobs)
    assert recover.apply().get() == 1
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
    deadline = store.redis.zscore(keys.OPEN_DELIVERIES, f"{busy}:pagerduty")
    assert deadline is not None
    assert deadline > time.time() + 100
    assert sweep(engine()) == []
    assert store.redis.zrange(keys.OPEN_DELIVERIES, 0, -1) == [f"{busy}:pagerduty"]

    found = sweep(engine(), now=deadline + 1)
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
