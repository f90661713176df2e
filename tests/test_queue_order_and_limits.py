"""Pages before email, the shared PagerDuty rate limit, and the pause after a 429."""

from __future__ import annotations

import itertools

import pytest
from celery.contrib.testing.worker import start_worker

import tasks
from config.settings import get_settings
from sandbox import SandboxServer
from tests.conftest import SandboxClient, reconfigure, wait_for
from worker import app
from worker.engine.runtime import engine
from worker.providers.base import Notification


def status(job_id: str) -> str:
    record = engine().jobs.get(job_id)
    assert record is not None
    return str(record["status"])


def pages_delivered(prefix: str, count: int, concurrency: int) -> None:
    """Queue ``count`` pages for one routing key and deliver them all with an in-thread
    worker of ``concurrency`` threads."""
    with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False):
        jobs = [
            tasks.enqueue(
                Notification(
                    recipient="db",
                    subject=f"{prefix} {i}",
                    priority="critical",
                    idempotency_id=f"{prefix}-{i}",
                )
            )
            for i in range(count)
        ]
        wait_for(lambda: all(status(j) == "delivered" for j in jobs), timeout=30)


def delivered_at(job_id: str, channel: str) -> float:
    record = engine().jobs.get(job_id)
    assert record is not None
    return float(max(a["at"] for a in record["attempts"] if a["outcome"] == "delivered"))


def test_a_page_queued_behind_200_emails_is_delivered_first(service_env: SandboxServer) -> None:
    emails = [
        tasks.enqueue(Notification(recipient=f"u{i}@example.com", subject=f"digest {i}"))
        for i in range(200)
    ]
    page = tasks.enqueue(
        Notification(recipient="db-2", subject="Primary down", priority="emergency")
    )
    # One worker, one slot, no -Q: it serves every queue, pages first.
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
        wait_for(lambda: status(page) == "delivered", timeout=20)
        wait_for(lambda: status(emails[-1]) == "delivered", timeout=60)
    first_email = min(delivered_at(e, "email") for e in emails)
    assert delivered_at(page, "pagerduty") < first_email


@pytest.fixture
def throttled(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    monkeypatch.setenv("PAGERDUTY_RATE_LIMIT", "4/second")
    get_settings.cache_clear()
    reconfigure()
    return service_env


def test_shared_rate_limit_defers_instead_of_collecting_429s(throttled: SandboxServer) -> None:
    api = SandboxClient(throttled)
    api.settings(rate_limit=4, rate_window=1.0)  # PagerDuty's limit, scaled down
    pages_delivered("rl", 16, concurrency=4)
    events = api.events()
    assert [e["status"] for e in events].count(429) == 0
    assert len(events) == 16
    times = sorted(e["at"] for e in events)
    # No more than 4 events in any 1-second window, as both limits require.
    assert all(times[i + 4] - times[i] >= 0.95 for i in range(len(times) - 4))
    assert times[-1] - times[0] >= 2.9  # 16 events at 4/s cannot take less than ~3 s
    api.close()


def test_a_429_pauses_the_key_for_every_worker(service_env: SandboxServer) -> None:
    api = SandboxClient(service_env)
    api.faults({"status": 429, "retry_after": "2"})
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False):
        first = tasks.enqueue(
            Notification(recipient="db", subject="a", priority="critical", idempotency_id="pz-a")
        )
        wait_for(lambda: api.events())  # the 429 has been answered
        others = [
            tasks.enqueue(
                Notification(
                    recipient="db", subject=f"b{i}", priority="critical", idempotency_id=f"pz-{i}"
                )
            )
            for i in range(3)
        ]
        wait_for(lambda: all(status(j) == "delivered" for j in [first, *others]), timeout=20)
    events = api.events()
    limited_at = events[0]["at"]
    assert events[0]["status"] == 429
    assert all(e["at"] - limited_at >= 2.0 for e in events[1:])
    assert [e["status"] for e in events[1:]] == [202] * 4
    record = engine().jobs.get(others[0])
    assert record is not None
    assert (
        any(a["outcome"] == "deferred" for a in record["attempts"])
        or record["channels"]["pagerduty"]["attempts"] == 1
    )
    api.close()


def test_429s_naming_no_wait_pause_the_key_longer_each_time_they_keep_coming(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PagerDuty throttles dynamically and asks for a backoff: a pause of RETRY_BASE_SECONDS
    after every 429 kept hitting it. Each 429 that comes while they keep coming doubles
    the pause, for every job to the key (one worker thread: three pages, in turns)."""
    monkeypatch.setenv("RETRY_BASE_SECONDS", "0.5")
    get_settings.cache_clear()
    reconfigure()
    api = SandboxClient(service_env)
    api.faults({"status": 429}, {"status": 429}, {"status": 429})
    pages_delivered("bk", 3, concurrency=1)
    events = api.events()
    api.close()
    assert [e["status"] for e in events] == [429, 429, 429, 202, 202, 202]
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(events[:4])]
    for gap, pause in zip(gaps, (0.5, 1.0, 2.0), strict=True):
        assert gap >= pause - 0.05, (gaps, pause)
    # A key with no 429 of late pauses for the first backoff; 429s answering requests sent
    # before that pause began (a burst in flight) are no new strikes.
    limiter = engine().limiter
    assert limiter.pause("a-key-never-throttled", None, backoff=5) == 5
    burst = [limiter.pause("a-key-never-throttled", None, backoff=5) for _ in range(4)]
    assert all(0 < pause <= 5 for pause in burst), burst
