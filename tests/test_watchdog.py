"""The watchdog drill: ``celery -A worker beat`` and a worker as processes, the sandbox's
ping sink as the external dead man's switch. Canaries arrive at the interval; they stop
when the workers stop and resume when they start; a canary that finds dead letters grown
calls the fail URL with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tasks
from api.metrics import exposition
from sandbox import SandboxServer
from tests.conftest import (
    SandboxClient,
    closed_port_url,
    in_thread_worker,
    reconfigure,
    wait_for,
)
from tests.processes import WorkerProcess
from tests.processes import beat as beat_process
from worker.engine.runtime import engine
from worker.engine.watchdog import send_canary
from worker.providers.base import Notification

WORKER = ("-P", "threads", "-c", "4")


def pings(sandbox: SandboxServer, **query: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{sandbox.url}/sandbox/pings", params=query).json())


@pytest.fixture
def watched(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    monkeypatch.setenv("WATCHDOG_URL", f"{service_env.url}/ping/gds-canary")
    monkeypatch.setenv("WATCHDOG_FAIL_URL", f"{service_env.url}/ping/gds-canary/fail")
    monkeypatch.setenv("WATCHDOG_INTERVAL", "1")
    reconfigure()
    return service_env


@pytest.fixture
def beat(watched: SandboxServer, tmp_path: Path) -> Iterator[Path]:
    with beat_process(tmp_path) as log:
        yield log


def test_canaries_arrive_stop_with_the_workers_and_resume(
    watched: SandboxServer, beat: Any, tmp_path: Path
) -> None:
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        wait_for(lambda: len(pings(watched, check="gds-canary")) >= 3, timeout=30)
        first = pings(watched)
        assert {p["kind"] for p in first} == {"success"}
        assert all(p["method"] == "GET" for p in first)
        worker.terminate()

        time.sleep(1.5)  # a canary already on its way may still land
        stopped = len(pings(watched))
        time.sleep(3)
        assert len(pings(watched)) == stopped  # no worker: the watchdog hears nothing

        worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
        wait_for(lambda: len(pings(watched)) >= stopped + 2, timeout=30)
    finally:
        worker.stop()
    # The canaries are nobody's notifications.
    assert engine().jobs.recent(100) == []


def test_a_canary_that_finds_dead_letters_grown_calls_the_fail_url(
    watched: SandboxServer, beat: Any, tmp_path: Path
) -> None:
    api = SandboxClient(watched)
    worker = WorkerProcess(tmp_path / "worker.log", *WORKER).start()
    try:
        wait_for(lambda: len(pings(watched, check="gds-canary")) >= 2, timeout=30)
        letters = engine().dead_letters
        letters.add(entry_id="old", job_id=None, channel="intake", reason="r", payload={})
        wait_for(lambda: [p for p in pings(watched) if p["kind"] == "fail"], timeout=30)
        # Replayed meanwhile, as a new one dies: the kept letters do not grow, but one was
        # written, and the watchdog says so.
        letters.remove("old")
        api.faults({"status": 400})
        job = tasks.enqueue(
            Notification(recipient="db-1", subject="Refused", priority="critical"),
        )
        wait_for(lambda: engine().jobs.get(job)["status"] == "dead-lettered")  # type: ignore[index]
        failed = wait_for(
            lambda: [p for p in pings(watched) if p["kind"] == "fail"][1:], timeout=30
        )
        assert failed[0]["method"] == "POST"
        assert failed[0]["body"] == "1 new dead letter since the previous canary"
        # Nothing new after that: the next canaries are good news again.
        count = len(pings(watched))
        wait_for(lambda: len(pings(watched)) > count, timeout=30)
        assert pings(watched)[-1]["kind"] == "success"
    finally:
        worker.stop()
        api.close()
    scraped = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(exposition().decode())
        for s in family.samples
    }
    assert scraped[("gds_notify_watchdog_pings_total", ("fail",))] == 2
    assert scraped[("gds_notify_watchdog_pings_total", ("ok",))] >= 3
    assert scraped[("gds_notify_watchdog_age_seconds", ())] < 60


def test_a_canary_says_fail_when_pages_are_late_or_it_came_through_late(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PagerDuty failing or throttling is retried for an hour before anything dies, and a
    backlog on the page queue delays every canary alike: neither writes a dead letter,
    and the watchdog heard "ok" throughout."""
    from worker.engine.watchdog import verdict

    monkeypatch.setenv("WATCHDOG_URL", f"{service_env.url}/ping/gds-canary")
    monkeypatch.setenv("WATCHDOG_INTERVAL", "10")
    monkeypatch.setenv("WATCHDOG_LATE_PAGE_SECONDS", "1")
    reconfigure()
    assert verdict(engine(), sent_at=time.time()) is None
    assert verdict(engine(), sent_at=time.time() - 25) == (
        "this canary took 25 s to come through (pages wait as long)"
    )
    tasks.enqueue(Notification(recipient="db-1", subject="Disk full", priority="critical"))
    assert verdict(engine()) is None  # no worker, but not late yet
    time.sleep(1.5)
    assert verdict(engine()) == "a page accepted 2 s ago is not delivered yet"


def test_a_canary_delivered_late_calls_the_fail_url_with_how_late(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery step hands the canary's own send time to the verdict: one that spent a
    minute on its way (a backlog on the page queue) says so to the external monitor."""
    import base64
    import json

    from config.queues import PAGERDUTY_QUEUE
    from worker.engine.delivery import deliver
    from worker.engine.watchdog import send_canary

    monkeypatch.setenv("WATCHDOG_URL", f"{service_env.url}/ping/gds-canary")
    monkeypatch.setenv("WATCHDOG_FAIL_URL", f"{service_env.url}/ping/gds-canary/fail")
    monkeypatch.setenv("WATCHDOG_INTERVAL", "10")
    reconfigure()
    assert send_canary(engine()) is not None
    envelope = json.loads(str(engine().redis.rpop(PAGERDUTY_QUEUE)))
    [[payload], _, _] = json.loads(base64.b64decode(envelope["body"]))
    payload["enqueued_at"] -= 60  # as if it had waited a minute behind other pages
    deliver(engine(), payload, envelope["headers"]["id"], "pagerduty")
    [ping] = pings(service_env)
    assert ping["kind"] == "fail"
    assert ping["body"].startswith("this canary took 6")
    assert ping["body"].endswith(" s to come through (pages wait as long)")


def test_a_monitor_that_cannot_be_reached_is_not_a_canary_that_did_not_arrive(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary came through but WATCHDOG_URL could not be called: that is an `error`
    ping (GdsNotifyWatchdogUnreachable, a ticket), not a stale canary, which paged "notifications
    may not be getting through" while every page went out."""
    monkeypatch.setenv("WATCHDOG_URL", closed_port_url())
    reconfigure()
    with in_thread_worker():
        job = send_canary(engine())
        assert job is not None
        wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "dead-lettered")
    scraped = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(exposition().decode())
        for s in family.samples
    }
    assert scraped[("gds_notify_watchdog_pings_total", ("error",))] == 1
    assert scraped[("gds_notify_watchdog_age_seconds", ())] < 60
