"""Intake messages a dead worker held (``notify`` and ``heartbeat`` from a Celery client):
put back on their queue by the recovery sweep, not an hour later by the visibility
timeout. Real Redis, a real worker process SIGKILLed holding them, a real worker after."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from config.settings import get_settings
from sandbox import SandboxServer
from tasks.recovery import recover
from tests.conftest import SandboxClient, in_thread_worker, reconfigure, wait_for
from tests.processes import WorkerProcess
from worker.celery_app import app
from worker.engine import intake_recovery, keys
from worker.engine.broker_queues import UNACKED_HASH, UNACKED_INDEX, queue_list
from worker.engine.intake_recovery import HELD_SECONDS, put_back
from worker.engine.runtime import engine

#: The countdown of the messages the worker is killed holding: long enough for it to be
#: killed first, short enough for the messages to fall due within the test.
COUNTDOWN = 6.0


@pytest.fixture
def api(service_env: SandboxServer) -> Any:
    client = SandboxClient(service_env)
    yield client
    client.close()


@pytest.fixture
def hour_long_visibility(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default visibility timeout: kombu alone would hand the messages back in an hour."""
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "3600")
    reconfigure()
    assert get_settings().celery_visibility_timeout == 3600


def broker() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url, decode_responses=True)


def page(name: str) -> dict[str, Any]:
    return {"recipient": "db-9", "subject": f"disk full ({name})", "priority": "critical"} | {
        "idempotency_id": f"intake-{name}"
    }


def held_by_a_killed_worker(tmp_path: Path, sends: dict[str, dict[str, Any]]) -> float:
    """A real worker process (pages and intake) takes every message of ``sends`` (task id:
    ``send_task``'s keywords, each with a countdown) and is SIGKILLed holding them, as the
    OOM killer would. When it was killed."""
    worker = WorkerProcess(
        tmp_path / "worker.log", "-P", "threads", "-c", "2", "-Q", "pagerduty,celery"
    )
    try:
        worker.start()
        for task_id, options in sends.items():
            app.send_task(task_id=task_id, **options)
        r = broker()
        wait_for(lambda: r.hlen(UNACKED_HASH) == len(sends), timeout=COUNTDOWN - 2)
        worker.kill()
    finally:
        worker.stop()
    killed_at = time.time()
    assert broker().hlen(UNACKED_HASH) == len(sends)  # in the dead worker's hands
    return killed_at


def etas() -> dict[str, float]:
    """When each message in a worker's hands falls due, by task id, as its headers say."""
    entries = [json.loads(e)[0]["headers"] for e in broker().hvals(UNACKED_HASH)]
    return {h["id"]: datetime.fromisoformat(h["eta"]).timestamp() for h in entries}


def test_a_notify_a_killed_worker_held_is_put_back_and_delivered_once(
    hour_long_visibility: None, api: SandboxClient, tmp_path: Path
) -> None:
    """A page sent with ``send_task("notify")`` (with a countdown, so the worker holds it)
    and a heartbeat, in a worker that is then killed: once they are :data:`HELD_SECONDS`
    past due, the sweep puts both back on the intake queue, marked redelivered, and the page
    is delivered once, under its own id. A notify not yet due, and a delivery (which its
    job record covers), are left where they are."""
    notify, beat_id, later, delivery = (str(uuid.uuid4()) for _ in range(4))
    killed_at = held_by_a_killed_worker(
        tmp_path,
        {
            notify: {"name": "notify", "args": [page("due")], "countdown": COUNTDOWN},
            beat_id: {"name": "heartbeat", "args": ["billing-api"], "countdown": COUNTDOWN},
            later: {"name": "notify", "args": [page("later")], "countdown": 3600},
            delivery: {
                "name": "deliver.pagerduty",
                "args": [{"job_id": "not-a-job"}],
                "queue": "pagerduty",
                "countdown": COUNTDOWN,
            },
        },
    )
    r = broker()
    due = etas()
    assert due[notify] > killed_at  # killed before its countdown ran out

    # Not yet held long enough past its countdown.
    assert put_back(engine(), now=min(due[notify], due[beat_id]) + HELD_SECONDS - 1) == []
    now = max(due[notify], due[beat_id]) + HELD_SECONDS + 1
    done = put_back(engine(), now=now)
    assert sorted((item.task, item.task_id) for item in done) == [
        ("heartbeat", beat_id),
        ("notify", notify),
    ]
    for item in done:  # held since its countdown ran out
        assert item.held_seconds == pytest.approx(now - due[item.task_id], abs=0.001)
    queued = [json.loads(m) for m in r.lrange("celery", 0, -1)]
    assert sorted(m["headers"]["id"] for m in queued) == sorted([notify, beat_id])
    assert all(m["headers"]["redelivered"] for m in queued)
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in queued)
    left = {json.loads(e)[0]["headers"]["id"] for e in r.hvals(UNACKED_HASH)}
    assert left == {later, delivery}
    assert r.zcard(UNACKED_INDEX) == 2
    assert put_back(engine(), now=now + 1) == []  # once
    assert r.hget(keys.STATS, "recovered:intake") == "2"

    with in_thread_worker():
        wait_for(lambda: (engine().jobs.get(notify) or {}).get("status") == "delivered", 30)
    assert len(api.incidents(dedup_key="intake-due")) == 1
    assert api.incidents(dedup_key="intake-later") == []


def test_an_intake_message_acknowledged_as_it_is_put_back_is_left_alone(
    hour_long_visibility: None, tmp_path: Path
) -> None:
    """The move is made only if the entry is still in the worker's hands as it was read:
    one acknowledged (or put back by another sweep) in between is not queued again."""
    notify = str(uuid.uuid4())
    killed_at = held_by_a_killed_worker(
        tmp_path, {notify: {"name": "notify", "args": [page("acked")], "countdown": COUNTDOWN}}
    )
    r = broker()
    [(tag, entry, taken_at)] = engine().broker.taken_before(time.time(), limit=10)
    assert taken_at <= killed_at
    r.hdel(UNACKED_HASH, tag)  # as the worker's acknowledgement does
    message = json.dumps(json.loads(entry)[0])
    assert engine().broker.put_back(tag, entry, "celery", message) is False
    assert r.llen("celery") == 0
    r.hset(UNACKED_HASH, tag, entry.replace("intake-acked", "intake-other"))  # not as read
    assert engine().broker.put_back(tag, entry, "celery", message) is False
    assert r.llen("celery") == 0
    r.hset(UNACKED_HASH, tag, entry)
    assert engine().broker.put_back(tag, entry, "celery", message) is True
    assert (r.llen("celery"), r.hlen(UNACKED_HASH), r.zcard(UNACKED_INDEX)) == (1, 0, 0)


def test_the_recovery_task_logs_each_intake_message_it_puts_back(
    hour_long_visibility: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    notify = str(uuid.uuid4())
    killed_at = held_by_a_killed_worker(
        tmp_path, {notify: {"name": "notify", "args": [page("logged")], "countdown": COUNTDOWN}}
    )
    monkeypatch.setattr(intake_recovery, "HELD_SECONDS", 1.0)
    time.sleep(max(0.0, killed_at + COUNTDOWN + 1.5 - time.time()))
    with caplog.at_level(logging.WARNING, logger="tasks.recovery"):
        assert recover.apply().get() == 1
    assert broker().llen("celery") == 1
    assert f"notify {notify}: in a worker's hands" in caplog.text
    assert "(its worker died?): put back on its queue" in caplog.text


def test_an_intake_message_with_a_priority_goes_back_to_that_prioritys_list(
    service_env: SandboxServer,
) -> None:
    """kombu keeps a queue's messages of priority 3-5 (and so on) in lists of their own:
    the list named is kombu's own, asked of its Redis transport."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for priority in (None, 0, 2, 3, 5, 6, 9, 12, -1, "x"):
            message = {"properties": {"priority": priority}}
            kombus = channel._q_for_pri("celery", channel._get_message_priority(message))
            assert queue_list("celery", priority) == kombus, priority


def test_what_a_hostile_producer_left_in_a_workers_hands_never_stops_the_sweep(
    service_env: SandboxServer,
) -> None:
    """kombu records whatever envelope a worker took. A priority of 1e999 (infinity to
    JSON), JSON nested past Python's limit, or not JSON at all is passed over or put back;
    the message next to them is put back either way."""
    r = broker()
    app.send_task("notify", args=[page("beside-hostile")], task_id="ok-id")
    [queued] = r.lrange("celery", 0, -1)
    r.delete("celery")
    envelope = json.loads(queued)
    infinite = json.loads(queued)
    infinite["headers"]["id"] = "infinite-id"
    infinite["properties"]["priority"] = float("inf")
    entries = {
        "tag-ok": json.dumps([envelope, "", "celery"]),
        "tag-infinite": json.dumps([infinite, "", "celery"]),
        "tag-deep": "[" * 100_000 + "]" * 100_000,
        "tag-garbage": "not json",
    }
    r.hset(UNACKED_HASH, mapping=entries)  # type: ignore[arg-type]
    r.zadd(UNACKED_INDEX, dict.fromkeys(entries, time.time() - 3600))
    done = put_back(engine())
    assert sorted(item.task_id for item in done) == ["infinite-id", "ok-id"]
    assert sorted(json.loads(m)["headers"]["id"] for m in r.lrange("celery", 0, -1)) == [
        "infinite-id",
        "ok-id",
    ]
    assert sorted(r.hkeys(UNACKED_HASH)) == ["tag-deep", "tag-garbage"]
