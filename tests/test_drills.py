"""Fault drills on real processes: workers killed and stopped, Redis restarted, PagerDuty
flaky and throttling, SMTP down, poison on the queues. Each drill proves: nothing lost,
nothing sent twice, the worker keeps serving."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

import tasks
from config.settings import get_settings
from sandbox import SandboxServer
from sandbox.redis_server import LocalRedis
from tasks import replay
from tests.conftest import SandboxClient, free_port, reconfigure, wait_for
from tests.processes import WorkerProcess
from worker.engine import keys
from worker.engine.runtime import engine
from worker.engine.workers import REPORT_EVERY_SECONDS
from worker.job_request import InvalidJobError

pytestmark = pytest.mark.slow

QUEUES = ("pagerduty", "celery", "email")
GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))
WORKER = ("-P", "threads", "-c", "4")
#: Requests already on their way when a 429 arrived may land this long after it (a loaded
#: machine can stall a thread between its pause check and its request).
IN_FLIGHT = 0.5


@pytest.fixture
def drill(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxClient]:
    """Short visibility timeout (a killed worker's jobs return in seconds), patient retries."""
    for name, value in {
        "CELERY_VISIBILITY_TIMEOUT": "6",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_CAP_SECONDS": "1",
        "RETRY_MAX_ATTEMPTS": "60",
        "RETRY_DEADLINE_SECONDS": "600",
        "PAGERDUTY_TIMEOUT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    reconfigure()
    api = SandboxClient(service_env)
    yield api
    api.close()


def page(prefix: str, i: int) -> dict[str, Any]:
    return {
        "recipient": f"db-{i}",
        "subject": f"{prefix} {i}",
        "priority": "critical",
        "idempotency_id": f"{prefix}-{i}",
    }


def broker() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def queues_empty() -> bool:
    """No message waiting or held unacknowledged anywhere in the broker."""
    r = broker()
    try:
        waiting = sum(
            r.llen(key) for q in QUEUES for key in r.scan_iter(f"{q}*") if r.type(key) == b"list"
        )
        return waiting == 0 and r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    finally:
        r.close()


def all_delivered(job_ids: list[str]) -> bool:
    store = engine().jobs
    return all((r := store.get(j)) is not None and r["status"] == "delivered" for j in job_ids)


def wait_all_delivered(job_ids: list[str], timeout: float) -> None:
    """Wait until every job is delivered; on timeout, say where the others are stuck."""
    try:
        wait_for(lambda: all_delivered(job_ids), timeout=timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(stuck(job_ids)) from None


def stuck(job_ids: list[str]) -> str:
    """The undelivered jobs' states, attempts and claims, and what the broker holds."""
    eng, r = engine(), broker()
    now = time.time()
    lines = []
    for job_id in job_ids:
        record = eng.jobs.get(job_id)
        if record is not None and record["status"] == "delivered":
            continue
        if record is None:
            lines.append(f"{job_id}: no record")
            continue
        for channel, info in record["channels"].items():
            deadline = r.zscore(keys.OPEN_DELIVERIES, f"{job_id}:{channel}")
            claim = r.pttl(keys.delivery_claim(job_id, channel))
            lines.append(
                f"{job_id} {channel}: {info['state']} after {info['attempts']}, "
                f"stall deadline in {None if deadline is None else round(deadline - now, 1)} s, "
                f"claim ttl {claim} ms, last {[a['outcome'] for a in record['attempts'][-3:]]}"
            )
    queues = {q: r.llen(q) for q in QUEUES}
    return (
        f"{len(lines)} deliveries not delivered; queues {queues}, unacked {r.hlen('unacked')}:\n"
        + "\n".join(lines[:20])
    )


def assert_one_incident_each(api: SandboxClient, prefix: str, n: int) -> None:
    keys = Counter(i["dedup_key"] for i in api.incidents() if i["dedup_key"].startswith(prefix))
    assert len(keys) == n, f"{n - len(keys)} pages never reached the sandbox"
    assert max(keys.values()) == 1, f"incidents opened twice: {keys.most_common(3)}"


@pytest.fixture
def recovery_sweep(drill: SandboxClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beat's recovery sweep every 2 s. A page the broker lost before any worker took it
    goes out again 10 s after it was queued (its pickup look); anything else lost, such as
    a retry's message, after 30 s without progress, a stall period short enough for the
    drills' waits and still longer than the pickup look, as the default is. The producer
    (this process) takes the settings too, not only the workers that inherit them: a
    job's first deadline is written when the job is created."""
    monkeypatch.setenv("JOB_STALL_SECONDS", "30")
    monkeypatch.setenv("JOB_RECOVERY_INTERVAL", "2")
    reconfigure()


@pytest.mark.usefixtures("recovery_sweep")
def test_worker_sigkilled_three_times_loses_nothing_and_sends_nothing_twice(
    drill: SandboxClient, tmp_path: Path
) -> None:
    drill.faults(random=[{"probability": 1.0, "fault": {"delay": 0.05}}])  # deliveries in flight
    log = tmp_path / "worker.log"
    # A SIGKILL between kombu's BRPOP and its unacked record loses the message from the
    # broker; beat's recovery sweep (in a worker that is not killed) publishes it again.
    beat = WorkerProcess(
        tmp_path / "beat.log", *WORKER, "-B", "--schedule", str(tmp_path / "beat-schedule")
    ).start()
    workers = [WorkerProcess(log, *WORKER).start(), WorkerProcess(log, *WORKER).start()]
    try:
        jobs = [tasks.enqueue(page("crash", i)) for i in range(300)]
        for kill in range(3):
            target = 60 * (kill + 1)
            wait_for(lambda t=target: len(drill.incidents()) >= t, timeout=60)
            workers[kill % 2].kill()
            workers[kill % 2] = WorkerProcess(log, *WORKER).start()
        wait_all_delivered(jobs, timeout=60)
        wait_for(queues_empty, timeout=20)
    finally:
        for w in [*workers, beat]:
            w.stop()
    assert_one_incident_each(drill, "crash-", 300)
    assert engine().dead_letters.count() == 0


@pytest.fixture
def aof_redis(
    drill: SandboxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalRedis]:
    """A private Redis configured as docker-compose.yml configures it (append-only file)."""
    (tmp_path / "redis").mkdir()
    server = LocalRedis(appendonly=True, directory=str(tmp_path / "redis")).start()
    monkeypatch.setenv("REDIS_URL", server.url)
    get_settings.cache_clear()
    reconfigure()
    yield server
    server.cleanup()


@pytest.mark.usefixtures("recovery_sweep")
def test_redis_restarted_mid_run_workers_reconnect_and_deliver_every_accepted_job(
    drill: SandboxClient, aof_redis: LocalRedis, tmp_path: Path
) -> None:
    # A message taken off its queue in the instant Redis stops is lost by the broker; the
    # recovery sweep (beat, here embedded with -B) publishes it again from the job record.
    drill.faults(random=[{"probability": 1.0, "fault": {"delay": 0.05}}])
    beat = ("-B", "--schedule", str(tmp_path / "beat-schedule"))
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER, *beat).start()
    accepted: list[str] = []
    refused: list[str] = []
    try:
        for i in range(200):
            if i == 80:
                aof_redis.stop()  # a clean stop, as `docker compose restart redis` does
            if i == 120:
                aof_redis.start()
                back = time.time()
            try:
                accepted.append(tasks.enqueue(page("restart", i)))
            except (redis.RedisError, OperationalError) as exc:
                # While Redis is down the producer is told so: never accepted, never lost.
                refused.append(type(exc).__name__)
        assert len(refused) == 40
        # Well inside the test's own time limit, so that a failure says what is stuck.
        wait_all_delivered(accepted, timeout=60)
        wait_for(queues_empty, timeout=30)
        assert worker.proc is not None
        assert worker.proc.poll() is None  # the same worker reconnected: nobody restarted it
        # ...and still says it is up: Celery empties its timer when the broker connection
        # drops, and a report scheduled once stopped for good (counted dead, paged).
        wait_for(lambda: time.time() > back + 2 * REPORT_EVERY_SECONDS, timeout=30)
        assert [w.seen_at > back + REPORT_EVERY_SECONDS for w in engine().workers.seen(60)] == [
            True
        ]
    finally:
        worker.stop()
    incidents = Counter(i["dedup_key"] for i in drill.incidents())
    assert max(incidents.values()) == 1
    assert len(incidents) == len(accepted) == 160


def test_flaky_pagerduty_every_page_delivered_no_incident_twice(
    drill: SandboxClient, tmp_path: Path
) -> None:
    drill.faults(
        random=[
            {"probability": 0.3, "fault": {"status": 503}},
            {"probability": 0.1, "fault": {"delay": 1.5}},  # longer than PAGERDUTY_TIMEOUT
            {"probability": 0.05, "fault": {"drop": True}},
        ],
        seed=7,
    )
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        jobs = [tasks.enqueue(page("flaky", i)) for i in range(100)]
        wait_all_delivered(jobs, timeout=90)  # inside the test's time limit, to say what is stuck
    finally:
        worker.stop()
    answers = Counter(e["status"] for e in drill.events())
    assert answers[503] > 0  # the faults really happened
    assert answers[None] > 0
    assert_one_incident_each(drill, "flaky-", 100)
    assert engine().dead_letters.count() == 0


@pytest.mark.parametrize("retry_after", ["2", None])
def test_throttled_pagerduty_no_retry_arrives_before_it_is_allowed(
    drill: SandboxClient, tmp_path: Path, retry_after: str | None
) -> None:
    throttle = {"status": 429, **({"retry_after": retry_after} if retry_after else {})}
    drill.faults(*([throttle] * 3))
    allowed = float(retry_after) if retry_after else get_settings().retry_base_seconds
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        jobs = [tasks.enqueue(page(f"throttle{retry_after}", i)) for i in range(10)]
        wait_all_delivered(jobs, timeout=60)
    finally:
        worker.stop()
    events = drill.events()
    throttled = [e for e in events if e["status"] == 429]
    assert len(throttled) == 3
    for hit in throttled:
        key = hit["body"]["dedup_key"]
        later = [e for e in events if e["body"]["dedup_key"] == key and e["seq"] > hit["seq"]]
        assert later, f"{key} was never retried"
        # The same job's retry, and (after requests already in flight) every other event
        # for this routing key, waits what was asked.
        assert later[0]["at"] >= hit["at"] + allowed
        for other in events:
            if other["seq"] > hit["seq"] and other["at"] > hit["at"] + IN_FLIGHT:
                assert other["at"] >= hit["at"] + allowed - 0.05
    assert_one_incident_each(drill, f"throttle{retry_after}-", 10)


def test_smtp_down_for_20_seconds_then_back_every_email_delivered_once(
    drill: SandboxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("SMTP_PORT", str(port))
    get_settings.cache_clear()
    reconfigure()
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        jobs = [
            tasks.enqueue(
                {
                    "recipient": f"u{i}@example.com",
                    "subject": f"mail {i}",
                    "idempotency_id": f"smtp-down-{i}",
                }
            )
            for i in range(30)
        ]
        time.sleep(20)  # nothing listens on the SMTP port
        assert not any(engine().jobs.get(j)["status"] == "delivered" for j in jobs)  # type: ignore[index]
        with SandboxServer(smtp_port=port) as back:
            wait_all_delivered(jobs, timeout=60)
            messages = back.mailbox.messages()
    finally:
        worker.stop()
    subjects = Counter(m["subject"] for m in messages)
    assert sorted(subjects) == sorted(f"mail {i}" for i in range(30))
    assert max(subjects.values()) == 1
    assert engine().dead_letters.count() == 0


def _envelope(task: str, args: list[Any], queue: str = "celery", body: bytes | None = None) -> str:
    task_id = str(uuid.uuid4())
    raw = body if body is not None else json.dumps([args, {}, {}]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": task_id,
            },
        }
    )


def test_poison_messages_are_dead_lettered_or_rejected_and_the_worker_keeps_serving(
    drill: SandboxClient, tmp_path: Path
) -> None:
    r = broker()
    poison = {
        "not JSON at all": ("celery", "this is not json {"),
        "JSON, not a message": ("celery", json.dumps([1, 2, 3])),
        "a message without headers": ("pagerduty", json.dumps({"body": "e30="})),
        "a body that is not JSON": ("celery", _envelope("notify", [], body=b"\xff\xfe{")),
        "a body that is not base64": (
            "celery",
            json.dumps({**json.loads(_envelope("notify", [])), "body": "abc"}),
        ),
        "an integer JSON parsers refuse": (
            "celery",
            _envelope("notify", [], body=b'[[{"n": ' + b"9" * 5000 + b"}], {}, {}]"),
        ),
        "notify with the wrong shape": ("celery", _envelope("notify", [["a", "list"]])),
        "notify with a wrong type": ("celery", _envelope("notify", [{"recipient": 5}])),
        "an unknown task": ("celery", _envelope("no.such.task", [{}])),
        "an unknown task on the page queue": ("pagerduty", _envelope("deliver.nothing", [])),
        "a delivery job of the wrong shape": ("pagerduty", _envelope("deliver.pagerduty", [{}])),
        "a huge body": (
            "celery",
            _envelope(
                "notify",
                [
                    {
                        "recipient": "db-1",
                        "subject": "x" * 2_000_000,
                        "priority": "critical",
                        "idempotency_id": "huge",
                    }
                ],
            ),
        ),
    }
    for queue, message in poison.values():
        r.lpush(queue, message)
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        wait_for(queues_empty, timeout=60)
        after = tasks.enqueue(page("after-poison", 1))
        wait_all_delivered([after], timeout=30)
        assert worker.proc is not None
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        r.close()
    reasons = sorted(e["reason"] for e in engine().dead_letters.list(100))
    expected = [
        "invalid delivery job: ",  # deliver.pagerduty with {}
        "invalid notification: payload: must be a JSON object",  # notify(["a", "list"])
        "invalid notification: recipient: Input should be a valid string",  # recipient 5
        "undecodable message: ",  # a body that is not UTF-8 JSON
        "undecodable message: ",  # an integer of 5,000 digits
        "unknown task 'deliver.nothing'",
        "unknown task 'no.such.task'",
        "unreadable broker message on 'celery': 'body' is not valid base64",
        "unreadable broker message on 'celery': a JSON list",
        "unreadable broker message on 'pagerduty': no 'properties' object",
        "unreadable broker message: not JSON",
    ]
    assert len(reasons) == len(expected), reasons  # one dead letter each, nothing else
    raw = next(e for e in engine().dead_letters.list(100) if e["channel"] == "broker")
    with pytest.raises(InvalidJobError, match="no task could read, not a job"):
        replay(raw["id"])  # a message, not a job: it says so instead of crashing
    for reason, start in zip(reasons, expected, strict=True):
        assert reason.startswith(start), (reason, start)
    # The huge page is delivered with its summary cut to PagerDuty's limit.
    huge = [i for i in drill.incidents() if i["dedup_key"] == "huge"]
    assert len(huge) == 1
    assert len(huge[0]["summary"]) <= 1024
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert "Connection to broker lost" not in log


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _altered(task: Any, args: Any, headers: dict[str, Any] | None = None, **outer: Any) -> str:
    """A ``notify``-like message with some of its envelope changed: ``headers`` merged
    into (a value of ``...`` removes the header), ``outer`` replacing top-level keys, and
    ``args`` the body's three parts when a tuple, else the one argument list."""
    body = json.dumps(list(args) if isinstance(args, tuple) else [args, {}, {}]).encode()
    message = json.loads(_envelope(task, [], body=body))
    for name, value in (headers or {}).items():
        if value is ...:
            del message["headers"][name]
        else:
            message["headers"][name] = value
    for name, value in outer.items():
        if value is ...:
            del message[name]
        else:
            message[name] = value
    return json.dumps(message)


def test_task_messages_celery_cannot_take_are_dead_lettered_and_no_worker_stops(
    drill: SandboxClient, tmp_path: Path
) -> None:
    # Each of these stopped Celery's consumer ("Unrecoverable error"), and kombu put it
    # back for the next worker to stop on; or spun the consumer reconnecting; or was
    # taken and hung, or dropped with a log line.
    job = page("bad-envelope", 0)
    long_ago = "2000-01-01T00:00:00+00:00"
    r = broker()
    poison = [
        ("'headers.task' is not a string", _altered(["notify"], [job])),
        ("'headers.id' is not a non-empty string", _altered("notify", [job], {"id": ["x"]})),
        ("'headers.id' is not a non-empty string", _altered("notify", [job], {"id": ...})),
        ("'headers.id' is not a non-empty string", _altered("notify", [job], {"id": 12345})),
        (
            "'headers.timelimit' is not [hard, soft] seconds",
            _altered("notify", [job], {"timelimit": [1]}),
        ),
        ("the body is not [args, kwargs, embed]", _altered("notify", ({},))),
        (
            "the body is not [args, kwargs, embed]",
            _altered("notify", [job], None, **{"content-type": ...}),
        ),
        ("the body's kwargs are not an object", _altered("notify", ([job], "x", {}))),
        ("the body's embed is not an object", _altered("notify", ([job], {}, "x"))),
        (
            "the arguments do not fit task 'deliver.email'",
            _altered("deliver.email", ["x", 1, None]),
        ),
        (
            "'headers.eta' 2100-01-01T00:00:00+00:00 is more than the visibility timeout",
            _altered("notify", [job], {"eta": "2100-01-01T00:00:00+00:00"}),
        ),
        ("'headers.eta' is not an ISO 8601 time", _altered("notify", [job], {"eta": 12345})),
        (
            # Expired, and no body to keep as a notification: kept as the message it is.
            f"expired ('headers.expires' {long_ago}) before a worker took it",
            _altered("notify", [job], {"expires": long_ago}, body=_b64(b"{not json")),
        ),
        (
            # Passes every check above, then fails inside Celery: it iterates over
            # stamped_headers when the message expires.
            "Celery could not take it: TypeError",
            _altered(
                "notify", [job], {"expires": "2100-01-01T00:00:00+00:00", "stamped_headers": 5}
            ),
        ),
    ]
    unreadable = [
        '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # past Python's recursion limit
        _altered("notify", [job]).replace('"retries": 0', '"retries": ' + "9" * 5000),
    ]
    # Expired: a sound notification the producer said not to send after that time.
    expired = _altered("notify", [job], {"expires": long_ago})
    for _, message in poison:
        r.lpush("celery", message)
    for message in [*unreadable, expired]:
        r.lpush("celery", message)
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        wait_for(queues_empty, timeout=60)
        after = tasks.enqueue(page("after-bad-envelope", 1))
        wait_all_delivered([after], timeout=30)
        assert worker.proc is not None
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        r.close()
    reasons = sorted(e["reason"] for e in engine().dead_letters.list(100))
    assert len(reasons) == len(poison) + len(unreadable) + 1, "\n".join(reasons)  # one each
    kept = engine().dead_letters.get(json.loads(expired)["headers"]["id"])
    assert kept is not None
    assert kept["channel"] == "intake"  # its notification, whole: a replay can send it
    assert kept["payload"] == {"args": [job]}
    assert kept["reason"].startswith(f"expired ('headers.expires' {long_ago}) before a worker")
    untakeable = sorted(x for x in reasons if x.startswith("unrunnable task message: "))
    expected = sorted(f"unrunnable task message: {start}" for start, _ in poison)
    assert len(untakeable) == len(expected), "\n".join(reasons)
    for reason, start in zip(untakeable, expected, strict=True):
        assert reason.startswith(start), (reason, start)
    for start, message in poison:  # kept under the task id Flower shows with the failure
        task_id = json.loads(message)["headers"].get("id")
        if isinstance(task_id, str):
            letter = engine().dead_letters.get(task_id)
            assert letter is not None, (start, task_id)
            assert letter["reason"].startswith(f"unrunnable task message: {start}")
    assert sum("unreadable broker message: not JSON (RecursionError" in x for x in reasons) == 1
    assert sum("unreadable broker message: not JSON (ValueError" in x for x in reasons) == 1
    assert not [i for i in drill.incidents() if i["dedup_key"] == "bad-envelope-0"]
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert "Connection to broker lost" not in log


def test_sigterm_during_delivery_loses_nothing(drill: SandboxClient, tmp_path: Path) -> None:
    drill.faults(random=[{"probability": 1.0, "fault": {"delay": 0.8}}])
    log = tmp_path / "worker.log"
    worker = WorkerProcess(log, *WORKER).start()
    successor = WorkerProcess(log, *WORKER)
    try:
        jobs = [tasks.enqueue(page("term", i)) for i in range(20)]
        wait_for(lambda: len(drill.events()) >= 2, timeout=20)  # deliveries under way
        assert worker.terminate(timeout=60) == 0  # warm shutdown
        successor.start()
        wait_all_delivered(jobs, timeout=60)
        wait_for(queues_empty, timeout=30)
    finally:
        worker.stop()
        successor.stop()
    assert_one_incident_each(drill, "term-", 20)
    assert engine().dead_letters.count() == 0


def test_a_poison_letter_is_found_by_its_task_id_and_never_displaces_a_jobs_letter(
    drill: SandboxClient, tmp_path: Path
) -> None:
    r = broker()
    refused = _envelope("notify", [["a", "list"]])  # dead-lettered at intake, by its id
    taken_id = json.loads(refused)["headers"]["id"]
    same_id = json.loads(_envelope("notify", [], body=b"\xff\xfe{"))
    same_id["headers"]["id"] = same_id["properties"]["correlation_id"] = taken_id
    undecodable = _envelope("notify", [], body=b"\xff\xfe{")
    undecodable_id = json.loads(undecodable)["headers"]["id"]
    reused = json.loads(_envelope("no.such.task", [{}]))  # the same id again: both are kept
    reused["headers"]["id"] = reused["properties"]["correlation_id"] = undecodable_id
    r.lpush("celery", refused)
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        wait_for(lambda: engine().dead_letters.get(taken_id), timeout=30)
        r.lpush("celery", json.dumps(same_id), undecodable)
        wait_for(lambda: engine().dead_letters.get(undecodable_id), timeout=30)
        # The very same message again (as the broker hands back one whose worker died
        # before acknowledging it): kept once.
        r.lpush("celery", undecodable)
        wait_for(queues_empty, timeout=30)
        r.lpush("celery", json.dumps(reused))
        wait_for(lambda: len(engine().dead_letters.list(10)) == 4, timeout=30)
    finally:
        worker.stop()
        r.close()
    letters = {e["id"]: e for e in engine().dead_letters.list(10)}
    assert letters[taken_id]["channel"] == "intake"  # a hostile copy of its id displaced nothing
    assert letters[taken_id]["reason"].startswith("invalid notification: payload:")
    elsewhere = sorted(letters[i]["reason"][:20] for i in letters if i.startswith("poison-"))
    assert elsewhere == ["undecodable message:", "unknown task 'no.suc"]
    assert letters[undecodable_id]["reason"].startswith("undecodable message: ")
    written = {
        c: engine().redis.hget(keys.STATS, f"dead_lettered:{c}") for c in ("intake", "broker")
    }
    assert written == {"intake": "1", "broker": "3"}  # each counted once, none replaced

    # The operator holding the task id from Flower's failure, as they would type it.
    status = subprocess.run(
        [GDS_NOTIFY, "status", undecodable_id], capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 1
    assert "its message was dead-lettered before it became a job (undecodable" in status.stderr
    assert f"gds-notify dlq show {undecodable_id}" in status.stderr
    shown = subprocess.run(
        [GDS_NOTIFY, "dlq", "show", undecodable_id], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["channel"] == "broker"
