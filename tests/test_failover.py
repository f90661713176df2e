"""The failover drill, on real processes: a master, two replicas and three Sentinels on
loopback; two worker pools and beat as the Procfile runs them; the HTTP API; producers
sending 300 pages over about 20 s through ``tasks.enqueue`` and the API. A third of the way
in the master is SIGKILLed and Sentinel promotes a replica. Nobody restarts anything.

With ``REDIS_MIN_REPLICAS=1``: every page accepted is delivered, once (one incident per
dedup key); every page refused was refused with an error; no dead letters; a heartbeat
service that was down stays one incident and a healthy one is not paged. With
``REDIS_MIN_REPLICAS=0`` the same drill runs and says what was lost, asserting nothing
about it (asynchronous replication may lose what the master acknowledged last).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tasks
from sandbox import SandboxServer
from sandbox.redis_server import RedisUnavailableError
from sandbox.sentinel_cluster import LocalSentinelCluster
from tests.api_server import serve
from tests.conftest import SandboxClient, reconfigure, wait_for
from tests.heartbeat_helpers import WriteCatalogue, service
from tests.processes import WorkerProcess, beat
from worker.engine.runtime import engine
from worker.providers.base import Notification

PAGES = 300
SECONDS = 20.0
POOLS = (
    ("-Q", "pagerduty,celery", "-P", "threads", "-c", "8", "-n", "pagerduty@%h"),
    ("-Q", "email", "-P", "threads", "-c", "4", "-n", "email@%h"),
)


@pytest.fixture
def cluster() -> Iterator[LocalSentinelCluster]:
    try:
        started = LocalSentinelCluster().start()
    except RedisUnavailableError as exc:
        pytest.skip(f"no Sentinel cluster: {exc}")
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def redis_url(cluster: LocalSentinelCluster) -> str:
    """The service's Redis in this module: the Sentinel cluster."""
    return cluster.url


def page(i: int) -> Notification:
    return Notification(
        recipient=f"db-{i}",
        subject=f"Failover drill page {i}",
        priority="critical",
        idempotency_id=f"failover-{i}",
    )


class Producers:
    """Pages sent at an even pace from a thread: every third through the HTTP API, the
    rest through ``tasks.enqueue``; each accepted (with its id) or refused (with why)."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url
        self.token = token
        self.accepted: dict[str, str] = {}
        self.accepted_at: dict[str, float] = {}
        self.refused: dict[str, str] = {}
        self.thread = threading.Thread(target=self.run, name="producers")

    def send(self, i: int, http: httpx.Client) -> None:
        key = f"failover-{i}"
        try:
            if i % 3 == 0:
                answer = http.post(
                    f"{self.api_url}/v1/notifications",
                    json=page(i).model_dump(mode="json"),
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=60,
                )
                if answer.status_code != 202:
                    self.refused[key] = f"HTTP {answer.status_code}: {answer.text[:200]}"
                    return
                self.accepted[key] = answer.json()["job_id"]
            else:
                self.accepted[key] = tasks.enqueue(page(i))
            self.accepted_at[key] = time.time()
        except Exception as exc:  # what a producer is told: recorded, never lost silently
            self.refused[key] = f"{type(exc).__name__}: {exc}"

    def run(self) -> None:
        started = time.monotonic()
        with httpx.Client() as http:
            for i in range(PAGES):
                self.send(i, http)
                pause = started + (i + 1) * SECONDS / PAGES - time.monotonic()
                if pause > 0:
                    time.sleep(pause)


def heartbeats_until(stop: threading.Event) -> None:
    """The healthy service reports every 0.3 s, across the failover (a report that fails
    during the election is retried by the client, then counted as a miss)."""
    while not stop.is_set():
        with contextlib.suppress(Exception):  # a missed heartbeat is the point of the drill
            tasks.heartbeat("steady")
        stop.wait(0.3)


def run_drill(
    cluster: LocalSentinelCluster,
    sandbox: SandboxServer,
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    min_replicas: int,
    freeze: bool = False,
) -> dict[str, Any]:
    """The drill; ``freeze``: the master stops answering (SIGSTOP, a hung host) instead of
    dying, and stays so until the end."""
    for name, value in {
        "REDIS_MIN_REPLICAS": str(min_replicas),
        "JOB_STALL_SECONDS": "10",
        "JOB_RECOVERY_INTERVAL": "2",
        "HEARTBEAT_CHECK_INTERVAL": "1",
        "CELERY_VISIBILITY_TIMEOUT": "60",
    }.items():
        monkeypatch.setenv(name, value)
    catalogue(service("steady", window=5, grace=3) + service("gone", window=1))
    reconfigure()
    pages = SandboxClient(sandbox)
    pools = [WorkerProcess(tmp_path / f"pool-{n}.log", *args) for n, args in enumerate(POOLS)]
    stop = threading.Event()
    beats = threading.Thread(target=heartbeats_until, args=(stop,), name="heartbeats")
    with beat(tmp_path):
        for pool in pools:
            pool.start(timeout=60)
        beats.start()
        try:
            # The silent service is down and paged before the master dies.
            wait_for(lambda: pages.incidents(dedup_key="medic-heartbeat-gone"), timeout=30)
            for api in serve(monkeypatch):
                from tests.api_server import NOTIFY_TOKEN

                producers = Producers(api.url, NOTIFY_TOKEN)
                producers.thread.start()
                time.sleep(SECONDS / 3)
                killed_at = time.time()
                old = cluster.freeze_master() if freeze else cluster.kill_master()
                cluster.wait_for_failover(old)
                failover = time.time() - killed_at
                producers.thread.join(120)
                assert not producers.thread.is_alive()
                wanted = set(producers.accepted)
                end = time.monotonic() + 60
                while time.monotonic() < end:  # what will arrive has arrived by then
                    if wanted <= {i["dedup_key"] for i in pages.incidents()}:
                        break
                    time.sleep(0.5)
                time.sleep(3)  # the heartbeat checker runs a few more times
        finally:
            stop.set()
            beats.join(10)
            for pool in pools:
                alive = pool.proc is not None and pool.proc.poll() is None
                pool.stop()
                assert alive, f"a worker pool died: see {pool.log}"
    incidents = pages.incidents()
    events = pages.events()
    pages.close()
    by_key: dict[str, int] = {}
    for incident in incidents:
        by_key[incident["dedup_key"]] = by_key.get(incident["dedup_key"], 0) + 1
    delivered_at = {
        e["body"].get("dedup_key"): e["at"]
        for e in events
        if e.get("status") == 202 and isinstance(e.get("body"), dict)
    }
    after = sorted(at for at in delivered_at.values() if at > killed_at)
    # Pages accepted after the kill: when the first of them went out (a page a worker held
    # as the master died can go out at once, which says nothing of the failover).
    later = sorted(
        delivered_at[key]
        for key, at in producers.accepted_at.items()
        if at > killed_at and key in delivered_at
    )
    return {
        "min_replicas": min_replicas,
        "accepted": len(producers.accepted),
        "refused": producers.refused,
        "lost": sorted(k for k in producers.accepted if k not in by_key),
        "duplicate_incidents": sorted(k for k, n in by_key.items() if n > 1),
        "dead_letters": engine().dead_letters.count(),
        "failover_seconds": round(failover, 2),
        "kill_to_first_delivery_seconds": round(after[0] - killed_at, 2) if after else None,
        "kill_to_first_new_page_delivered_seconds": (
            round(later[0] - killed_at, 2) if later else None
        ),
        "incidents": by_key,
    }


def report(result: dict[str, Any], tmp_path: Path) -> None:
    summary = {k: v for k, v in result.items() if k != "incidents"}
    summary["refused"] = len(result["refused"])
    # What producers were told, once per distinct answer.
    summary["refusals"] = dict(Counter(r[:120] for r in result["refused"].values()))
    line = "failover drill: " + json.dumps(summary)
    (tmp_path / "failover.json").write_text(json.dumps(result, indent=2))
    print(line)


def assert_every_accepted_page_delivered_once(result: dict[str, Any]) -> None:
    """Most pages accepted, each refused one told why; every accepted page delivered, one
    incident each; nothing dead-lettered."""
    assert result["accepted"] + len(result["refused"]) == PAGES
    assert result["accepted"] >= PAGES * 0.8, result["refused"]
    assert all(result["refused"].values())  # each refusal said why
    assert result["lost"] == []
    assert result["duplicate_incidents"] == []
    assert result["dead_letters"] == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failover_loses_no_accepted_page_with_one_replica_confirming(
    cluster: LocalSentinelCluster,
    service_env: SandboxServer,
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    result = run_drill(cluster, service_env, catalogue, monkeypatch, tmp_path, min_replicas=1)
    report(result, tmp_path)
    assert_every_accepted_page_delivered_once(result)
    assert result["kill_to_first_delivery_seconds"] is not None
    # Heartbeats across the failover: the down service is still one incident, the healthy
    # one was never paged.
    assert result["incidents"]["medic-heartbeat-gone"] == 1
    assert "medic-heartbeat-steady" not in result["incidents"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_same_failover_without_replica_confirmation_is_reported(
    cluster: LocalSentinelCluster,
    service_env: SandboxServer,
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    result = run_drill(cluster, service_env, catalogue, monkeypatch, tmp_path, min_replicas=0)
    report(result, tmp_path)
    assert result["accepted"] + len(result["refused"]) == PAGES  # nothing asserted beyond


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_master_that_hangs_instead_of_dying_loses_no_accepted_page(
    cluster: LocalSentinelCluster,
    service_env: SandboxServer,
    catalogue: WriteCatalogue,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A frozen master keeps its connections open and answers nothing: every client must
    give up on it by its own timeouts. The broker's waited 30 s a call, one pooled
    connection after another, and no page went out for about 100 s (here: none before the
    drill's end, while the old master stayed frozen)."""
    result = run_drill(
        cluster, service_env, catalogue, monkeypatch, tmp_path, min_replicas=1, freeze=True
    )
    report(result, tmp_path)
    assert_every_accepted_page_delivered_once(result)
