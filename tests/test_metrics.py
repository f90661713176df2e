"""``/metrics`` as Prometheus reads it: parsed with prometheus_client's own parser, after
real work went through a real Redis, an in-thread worker and the sandbox. The values are
the pool's (they live in Redis), so a second process — ``gds-notify metrics`` — answers
the same."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import tasks
from api import metrics as metrics_module
from api.redis_deadline import SingleFlight, TooSlow
from api.response_counts import COUNTS
from api.routes import health
from cli.main import main
from config.settings import Settings
from sandbox.redis_server import LocalRedis
from tests.api_server import NOTIFY_TOKEN, ApiServer, serve
from tests.conftest import (
    ROUTING_KEY,
    SMTP_PASSWORD,
    TEAM_KEY,
    SandboxClient,
    free_port,
    in_thread_worker,
    reconfigure,
    wait_for,
)
from tests.heartbeat_helpers import WriteCatalogue, service
from worker.engine import keys, stats
from worker.engine.heartbeats.paging import run_check
from worker.engine.recovery import recover as sweep
from worker.engine.runtime import engine
from worker.providers.base import Notification

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by name and labels."""
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples_of(answer.text)


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape's text, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def page(i: int, **fields: Any) -> Notification:
    return Notification(
        recipient=f"db-{i}",
        subject=f"Disk full {i}",
        priority="critical",
        idempotency_id=f"metrics-{i}",
        **fields,
    )


def delivered(job_id: str) -> None:
    wait_for(
        lambda: (r := engine().jobs.get(job_id)) and r["status"] in ("delivered", "dead-lettered")
    )


def test_the_work_of_the_pool_is_counted(
    api_server: ApiServer, celery_worker: Any, service_env: Any
) -> None:
    pages = SandboxClient(service_env)
    try:
        jobs = [tasks.enqueue(page(1), team="dba"), tasks.enqueue(page(2))]
        assert tasks.enqueue(page(1), team="dba") == jobs[0]  # a duplicate
        with pytest.raises(tasks.InvalidJobError):
            tasks.enqueue({"recipient": "", "subject": "x"})
        for job in jobs:  # so that the 429 below meets page 3 and no other
            delivered(job)
        pages.faults({"status": 429})  # throttled once, then through
        jobs.append(tasks.enqueue(page(3), team="dba"))
        delivered(jobs[-1])
        pages.faults({"status": 400})  # refused for good: dead-lettered
        dead = tasks.enqueue(page(4))
        delivered(dead)
        mail = tasks.enqueue(Notification(recipient="a@example.com", subject="Report"))
        delivered(mail)
        with api_server.client() as http:
            assert http.post("/v1/notifications", json={"recipient": ""}).status_code == 422
            accepted = http.post(
                "/v1/notifications", json={"recipient": "b@example.com", "subject": "Hi"}
            )
            delivered(accepted.json()["job_id"])
        client = Celery(broker=os.environ["REDIS_URL"])
        client.send_task("notify", args=[{"recipient": "", "subject": "x"}])
        client.close()
        wait_for(lambda: engine().dead_letters.count() == 2)
    finally:
        pages.close()

    # Closed by each delivery's last record, before any scrape looked.
    assert engine().redis.zcard(keys.open_since("pagerduty")) == 0
    assert engine().redis.zcard(keys.open_since("email")) == 0
    s = scrape(f"{api_server.url}/metrics")
    n = "gds_notify_notifications_total"
    assert value(s, n, source="enqueue", outcome="accepted") == 5
    assert value(s, n, source="enqueue", outcome="duplicate") == 1
    assert value(s, n, source="enqueue", outcome="invalid") == 1
    assert value(s, n, source="api", outcome="accepted") == 1
    assert value(s, n, source="api", outcome="invalid") == 1
    assert value(s, n, source="notify", outcome="invalid") == 1
    assert value(s, n, source="alertmanager", outcome="accepted") == 0  # there from the start

    d = "gds_notify_deliveries_total"
    assert value(s, d, channel="pagerduty", outcome="delivered") == 3
    assert value(s, d, channel="pagerduty", outcome="retried") == 1
    assert value(s, d, channel="pagerduty", outcome="dead") == 1
    assert value(s, d, channel="email", outcome="delivered") == 2
    failures = "gds_notify_delivery_failures_total"
    assert value(s, failures, channel="pagerduty", error="NotificationRateLimitError") == 1
    assert value(s, failures, channel="pagerduty", error="NotificationDeliveryError") == 1
    assert value(s, "gds_notify_pagerduty_throttled_total", team="dba") == 1

    latency = "gds_notify_delivery_latency_seconds"
    assert value(s, latency + "_count", channel="pagerduty") == 3
    assert value(s, latency + "_bucket", channel="pagerduty", le="+Inf") == 3
    assert value(s, latency + "_sum", channel="pagerduty") > 0
    call = "gds_notify_provider_call_seconds"
    assert value(s, call + "_count", channel="pagerduty") == 5  # every attempt
    assert value(s, call + "_count", channel="email") == 2

    assert value(s, "gds_notify_dead_letters", channel="pagerduty") == 1
    assert value(s, "gds_notify_dead_letters", channel="intake") == 1
    oldest = "gds_notify_dead_letter_oldest_age_seconds"
    assert 0 < value(s, oldest, channel="pagerduty") < 120
    assert value(s, oldest, channel="email") == 0
    # A letter left two days: its age, for GdsNotifyDeadLettersUnattended.
    [letter] = engine().dead_letters.list(channel="pagerduty")
    engine().redis.zadd(
        keys.dead_letter_channel("pagerduty"), {letter["id"]: time.time() - 2 * 86400}
    )
    aged = value(scrape(f"{api_server.url}/metrics"), oldest, channel="pagerduty")
    assert 2 * 86400 <= aged < 2 * 86400 + 120
    assert value(s, "gds_notify_workers_alive", queue="pagerduty") >= 1
    assert value(s, "gds_notify_redis_up") == 1
    assert value(s, "gds_notify_queue_messages", queue="pagerduty") == 0
    assert value(s, "gds_notify_unacked_messages") == 0
    # Every ending (delivered, dead) closed its delivery: nothing is late.
    for channel in ("pagerduty", "email"):
        assert value(s, "gds_notify_oldest_undelivered_seconds", channel=channel) == 0
    build = [k for k in s if k[0] == "gds_notify_build_info"]
    assert len(build) == 1

    # Nothing in it is a secret, a job id or a recipient.
    text = httpx.get(f"{api_server.url}/metrics").text
    for secret in (ROUTING_KEY, TEAM_KEY, SMTP_PASSWORD, NOTIFY_TOKEN, jobs[0], "db-1"):
        assert secret not in text


def test_a_page_the_limiter_holds_is_late_though_no_queue_holds_it(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERDUTY_RATE_LIMIT", "1/minute")
    reconfigure()
    with in_thread_worker():
        delivered(tasks.enqueue(page(1)))
        held = tasks.enqueue(page(2))  # over the limit: put aside for most of a minute
        wait_for(lambda: engine().jobs.get(held)["channels"]["pagerduty"]["state"] == "deferred")  # type: ignore[index]
        # A resolve waits for its trigger and its turn: not what "late" measures.
        resolve = tasks.resolve("metrics-2")
        assert engine().redis.zscore(keys.open_since("pagerduty"), resolve) is None
        seconds, micros = engine().redis.time()
        accepted = engine().redis.zscore(keys.open_since("pagerduty"), held)
        assert accepted is not None
        assert 0 <= seconds + micros / 1e6 - accepted < 30  # on Redis's clock
        # An entry whose record is gone (a removal missed, say) is dropped when met.
        engine().redis.zadd(keys.open_since("pagerduty"), {"expired-job": time.time() - 3600})
        time.sleep(1.5)
        s = scrape(f"{api_server.url}/metrics")
        # Entries left by a worker of an earlier version, older than the late page.
        gone = {f"gone-{i}": time.time() - 7200 + i for i in range(120)}
        engine().redis.zadd(keys.open_since("pagerduty"), gone)
        listed = CliRunner().invoke(main, ["jobs", "--late", "pagerduty"])
    assert value(s, "gds_notify_queue_oldest_message_age_seconds", queue="pagerduty") == 0
    assert 1.5 <= value(s, "gds_notify_oldest_undelivered_seconds", channel="pagerduty") < 60
    assert value(s, "gds_notify_oldest_undelivered_seconds", channel="email") == 0
    assert engine().redis.zscore(keys.open_since("pagerduty"), "expired-job") is None
    # The runbook's way to them: the late page alone (not the resolve waiting behind it).
    assert listed.exit_code == 0, listed.output
    [line] = listed.output.strip().splitlines()
    assert line.startswith(held)
    assert "pagerduty deferred" in line
    assert engine().redis.zcard(keys.open_since("pagerduty")) == 1  # the rest dropped


def test_queues_and_their_oldest_message_without_a_worker(api_server: ApiServer) -> None:
    tasks.enqueue(page(1))
    tasks.enqueue(page(2))
    client = Celery(broker=os.environ["REDIS_URL"])
    client.send_task("notify", args=[{"recipient": "a@example.com", "subject": "x"}])
    client.close()
    time.sleep(0.3)
    first = scrape(f"{api_server.url}/metrics")
    assert value(first, "gds_notify_queue_messages", queue="pagerduty") == 2
    assert value(first, "gds_notify_queue_messages", queue="celery") == 1
    # A page carries the time it was accepted: its age is known at once.
    assert value(first, "gds_notify_queue_oldest_message_age_seconds", queue="pagerduty") >= 0.3
    # A message from any producer is aged from the scrape that first saw it.
    assert value(first, "gds_notify_queue_oldest_message_age_seconds", queue="celery") == 0
    time.sleep(0.5)
    second = scrape(f"{api_server.url}/metrics")
    age = value(second, "gds_notify_queue_oldest_message_age_seconds", queue="celery")
    assert age >= 0.5
    assert value(second, "gds_notify_workers_alive", queue="pagerduty") == 0


def test_heartbeat_gauges(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch, service_env: Any
) -> None:
    catalogue(service("billing-api", window=60) + service("etl", window=60, team="data"))
    for api in serve(monkeypatch):
        # Monitoring is on and no check ever ran (beat never started, or Redis lost its
        # data): the check is infinitely old, so the stale-check alert can fire.
        before = scrape(f"{api.url}/metrics")
        assert value(before, "gds_notify_heartbeat_check_age_seconds") == math.inf
        assert value(before, "gds_notify_heartbeat_services", state="up") == 0
        tasks.heartbeat("billing-api")
        tasks.heartbeat("etl", status="fail")
        run_check(engine())
        s = scrape(f"{api.url}/metrics")
        assert value(s, "gds_notify_heartbeats_total", status="up") == 1
        assert value(s, "gds_notify_heartbeats_total", status="fail") == 1
        states = {
            labels[0][1]: v
            for (name, labels), v in s.items()
            if name == "gds_notify_heartbeat_services"
        }
        assert sum(states.values()) == 2
        assert set(states) == {"new", "up", "failing", "down", "inactive"}
        assert 0 <= value(s, "gds_notify_heartbeat_check_age_seconds") < 5


def test_heartbeat_gauges_appear_with_the_first_registered_service(api_server: ApiServer) -> None:
    """No services file: monitoring is off, nothing to show, until Medic's API registers a
    service; from then the check that never ran is infinitely old."""
    from config.catalogue import ServiceSpec
    from worker.engine.heartbeats.registry import Registration

    off = scrape(f"{api_server.url}/metrics")
    assert not any(name.startswith("gds_notify_heartbeat_") for name, _ in off)
    spec = ServiceSpec(slug="etl", name="ETL", team="data", priority="P2", window=60)
    assert engine().registry.add(Registration.new(spec))
    on = scrape(f"{api_server.url}/metrics")
    assert value(on, "gds_notify_heartbeat_check_age_seconds") == math.inf


def test_a_refused_catalogue_edit_is_logged_and_exported(
    catalogue: WriteCatalogue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The last good catalogue stays in force, so nothing pages wrongly; but what the edit
    adds is not watched and the next worker to start on the file stops: someone must hear."""
    catalogue(service("billing-api", window=60))
    for api in serve(monkeypatch):
        good = scrape(f"{api.url}/metrics")
        with caplog.at_level("ERROR", logger="config.catalogue"):
            catalogue(service("billing-api", window=60) + service("etl", window=60, priority="P9"))
            bad = scrape(f"{api.url}/metrics")
            scrape(f"{api.url}/metrics")  # read again: logged once per edit
        catalogue(service("billing-api", window=60) + service("etl", window=60))
        mended = scrape(f"{api.url}/metrics")
        path = catalogue(service("billing-api", window=60))
        path.unlink()  # deleted: a worker started now would stop as surely
        gone = scrape(f"{api.url}/metrics")
        catalogue(service("billing-api", window=60))
        back = scrape(f"{api.url}/metrics")
    assert value(good, "gds_notify_heartbeat_catalogue_refused") == 0
    assert value(bad, "gds_notify_heartbeat_catalogue_refused") == 1
    assert value(mended, "gds_notify_heartbeat_catalogue_refused") == 0
    assert value(gone, "gds_notify_heartbeat_catalogue_refused") == 1
    assert value(back, "gds_notify_heartbeat_catalogue_refused") == 0
    [refused] = [r.getMessage() for r in caplog.records if "edit refused" in r.getMessage()]
    assert "services.etl.priority" in refused


def test_a_worker_clock_off_from_redis_is_exported(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retry deadlines and the recovery sweep read host clocks: a host whose clock runs
    half a minute fast is seen at its worker's next report (its clock faked here)."""
    engine().workers.report("ok@host-1", ["pagerduty"], 1, "boot-1")
    in_step = scrape(f"{api_server.url}/metrics")
    real = time.time
    with monkeypatch.context() as fast:  # only for the report: the scrape keeps real time
        fast.setattr(time, "time", lambda: real() + 30)
        engine().workers.report("fast@host-2", ["email"], 2, "boot-2")
    off = scrape(f"{api_server.url}/metrics")
    assert value(in_step, "gds_notify_worker_clock_skew_seconds") < 1
    assert 29 < value(off, "gds_notify_worker_clock_skew_seconds") < 31


def test_an_unreachable_redis_is_a_successful_scrape_that_says_so(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reconfigure()
    s = scrape(f"{api_server.url}/metrics")
    assert value(s, "gds_notify_redis_up") == 0
    assert not any(k[0] == "gds_notify_queue_messages" for k in s)


def test_messages_sent_with_a_celery_priority_are_counted_in_their_queue(
    api_server: ApiServer,
) -> None:
    """kombu keeps a message sent with a priority in a list of its own (``celery`` +
    ``\\x06\\x169``): the queue's count and its oldest message's age left it out, so a
    `notify` sent at priority 9 could wait unseen by GdsNotifyPagesQueuedTooLong."""
    producer = Celery(broker=engine().settings.redis_url)
    try:
        producer.send_task("notify", args=[{"recipient": "a", "subject": "x"}], priority=9)
        first = scrape(f"{api_server.url}/metrics")
        time.sleep(1.1)
        later = scrape(f"{api_server.url}/metrics")
        producer.send_task("notify", args=[{"recipient": "b", "subject": "y"}])
        both = scrape(f"{api_server.url}/metrics")
    finally:
        producer.close()
    assert value(first, "gds_notify_queue_messages", queue="celery") == 1
    age = "gds_notify_queue_oldest_message_age_seconds"
    assert value(first, age, queue="celery") == 0  # first seen now
    assert value(later, age, queue="celery") >= 1
    assert value(both, "gds_notify_queue_messages", queue="celery") == 2
    assert value(both, age, queue="celery") >= 1  # still the priority one, the oldest


def test_a_team_is_one_label_however_its_producers_write_it(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routing reads `dba-prod`, `DBA_PROD` and ` Dba-Prod ` as one team, with one key;
    their throttled and deferred counts were split over two series."""
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_DBA_PROD", TEAM_KEY)
    settings = Settings()
    labels = {stats.team_label(settings, team) for team in ("dba-prod", "DBA_PROD", " Dba-Prod ")}
    assert labels == {"dba_prod"}
    assert stats.team_label(settings, "nobody") == "default"


@pytest.mark.parametrize("refusal", ["out of memory", "read-only replica"])
def test_a_redis_that_answers_but_refuses_writes_is_named_as_such(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """A real Redis out of memory (noeviction), or a replica taken for the master: it
    answers pings and reads, and takes no job. Scrapes and /readyz say so, instead of the
    workers (who cannot report either) looking dead."""
    with LocalRedis() as own, LocalRedis() as master:
        monkeypatch.setenv("REDIS_URL", own.url)
        reconfigure()
        raw = redis.Redis.from_url(own.url)
        fine = scrape(f"{api_server.url}/metrics")
        # A notify from any producer: the next scrape would note when it first saw it.
        producer = Celery(broker=own.url)
        producer.send_task("notify", args=[{"recipient": "a@example.com", "subject": "x"}])
        producer.close()
        if refusal == "out of memory":
            raw.config_set("maxmemory-policy", "noeviction")
            raw.config_set("maxmemory", 1)
        else:
            raw.replicaof("127.0.0.1", master.port)
        refused = scrape(f"{api_server.url}/metrics")
        ready = httpx.get(f"{api_server.url}/readyz")
        raw.close()
    assert value(fine, "gds_notify_redis_writable") == 1
    assert value(refused, "gds_notify_redis_up") == 1
    assert value(refused, "gds_notify_redis_writable") == 0
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["redis"]
    said = {"out of memory": "OutOfMemoryError: ", "read-only replica": "ReadOnlyError: "}
    assert ready.json()["checks"]["redis"].startswith(f"not writable: {said[refusal]}")
    assert "of pipeline" not in ready.json()["checks"]["redis"]  # Redis' words, whole


def test_too_few_replicas_for_redis_min_replicas_is_a_redis_refusing_writes(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDIS_MIN_REPLICAS=1 and no replica: every accept is a 503, yet the probe's write
    went through, so /readyz said ok and no alert fired. The probe waits for the replicas
    as an accept does."""
    with LocalRedis() as own:
        monkeypatch.setenv("REDIS_URL", own.url)
        monkeypatch.setenv("REDIS_MIN_REPLICAS", "1")
        reconfigure()
        alone = scrape(f"{api_server.url}/metrics")
        alone_ready = httpx.get(f"{api_server.url}/readyz", timeout=9)
        with LocalRedis(extra=["--replicaof", "127.0.0.1", str(own.port)]) as replica:
            follower = redis.Redis.from_url(replica.url)
            wait_for(lambda: follower.info("replication")["master_link_status"] == "up")
            follower.close()
            followed = scrape(f"{api_server.url}/metrics")
            followed_ready = httpx.get(f"{api_server.url}/readyz", timeout=9)
    assert value(alone, "gds_notify_redis_up") == 1
    assert value(alone, "gds_notify_redis_writable") == 0
    assert alone_ready.json()["checks"]["redis"].startswith(
        "not writable: too few replicas: 0 of the 1 REDIS_MIN_REPLICAS asks for"
    )
    assert value(followed, "gds_notify_redis_writable") == 1
    assert followed_ready.json()["checks"]["redis"] == "ok"


def test_dead_letters_written_are_counted_once_each_whatever_is_replayed_or_purged(
    api_server: ApiServer,
) -> None:
    letters = engine().dead_letters
    for entry_id in ("a", "a", "b"):  # "a" twice: an Alertmanager repeat, one letter
        letters.add(entry_id=entry_id, job_id=None, channel="intake", reason="r", payload={})
    letters.remove("a")  # replayed
    # A poison copy of a delivery's message, then that job's own letter under the same id:
    # the letter changes kind, and is counted under its new one.
    letters.add(entry_id="j-pagerduty", job_id=None, channel="broker", reason="r", payload={})
    letters.add(entry_id="j-pagerduty", job_id="j", channel="pagerduty", reason="r", payload={})
    assert letters.list(channel="broker") == []
    s = scrape(f"{api_server.url}/metrics")
    assert value(s, "gds_notify_dead_lettered_total", channel="intake") == 2
    assert value(s, "gds_notify_dead_lettered_total", channel="email") == 0  # known, at 0
    assert value(s, "gds_notify_dead_lettered_total", channel="broker") == 1
    assert value(s, "gds_notify_dead_lettered_total", channel="pagerduty") == 1
    assert value(s, "gds_notify_dead_letters", channel="intake") == 1


def test_a_poison_copy_racing_its_jobs_own_letter_leaves_one_letter_of_the_jobs_kind(
    service_env: Any,
) -> None:
    """A delivery's message kept as poison (never replacing) while its job dead-letters
    under the same id (replacing), at once: whichever lands first, the job's letter is what
    is kept, listed under its own channel only, and each letter written is counted once."""
    letters = engine().dead_letters
    ids = [f"race-{i}-pagerduty" for i in range(1000)]
    poison_kept: list[str] = []

    def poison() -> None:
        for entry_id in ids:
            if letters.add(
                entry_id=entry_id,
                job_id=None,
                channel="broker",
                reason="poison",
                payload={},
                only_new=True,
            ):
                poison_kept.append(entry_id)

    def job() -> None:
        for entry_id in ids:
            letters.add(
                entry_id=entry_id, job_id="j", channel="pagerduty", reason="dead", payload={}
            )

    with ThreadPoolExecutor(4) as pool:  # two of each: redelivered copies race too
        for ran in [pool.submit(step) for step in (poison, job, poison, job)]:
            ran.result()
    assert {(letters.get(i) or {}).get("channel") for i in ids} == {"pagerduty"}
    assert letters.count(channel="broker") == 0
    assert letters.count(channel="pagerduty") == letters.count() == len(ids)
    counted = engine().redis.hgetall(keys.STATS)
    assert float(counted["dead_lettered:pagerduty"]) == len(ids)
    assert float(counted.get("dead_lettered:broker", 0)) == len(poison_kept)


def test_a_hung_redis_is_a_scrape_saying_so_within_the_scrape_timeout(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that stops answering (frozen, or its host gone) rather than refusing: the
    scrape took 20 s, past Prometheus' 10 s timeout, so redis_up 0 was never seen and the
    one-minute RedisDown alert never fired."""
    with LocalRedis() as hung:
        monkeypatch.setenv("REDIS_URL", hung.url)
        reconfigure()
        assert value(scrape(f"{api_server.url}/metrics"), "gds_notify_redis_up") == 1
        assert hung.pid is not None
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            # Within Prometheus' default scrape timeout, or it counts as no answer at all.
            with httpx.Client(base_url=api_server.url, timeout=9) as http:
                metrics = http.get("/metrics")
                ready = http.get("/readyz")
        finally:
            os.kill(hung.pid, signal.SIGCONT)
            wait_for(lambda: metrics_module.READS.idle() and health.READS.idle())
    assert value(samples_of(metrics.text), "gds_notify_redis_up") == 0
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["redis"]


class SlowProxy:
    """A TCP proxy to a Redis that holds each of its answers for ``delay`` seconds: a
    Redis that answers every read, each just inside the per-read timeout."""

    def __init__(self, port: int, delay: float) -> None:
        self.target, self.delay = port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.open: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, self.delay), daemon=True
            ).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while chunk := source.recv(65536):
                time.sleep(delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        for each in self.open:
            each.close()


def test_a_slow_redis_is_a_scrape_saying_so_within_the_scrape_timeout(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that answers every read in 2 s, inside the per-read timeout (3 s): the
    scrape's reads one after another took 15 s, so Prometheus gave up at 10 s, the
    target looked down ("restart the API") and redis_up 0 was never seen. All of a
    scrape's reads, and all of a readiness probe's, now have one deadline."""
    reads = []
    real_read = metrics_module._read

    def counted_read(eng: Any) -> Any:
        reads.append(1)
        return real_read(eng)

    monkeypatch.setattr(metrics_module, "_read", counted_read)
    with LocalRedis() as redis_server:
        proxy = SlowProxy(redis_server.port, delay=2.0)
        try:
            monkeypatch.setenv("REDIS_URL", proxy.url)
            reconfigure()
            with httpx.Client(base_url=api_server.url, timeout=9) as http:
                metrics = http.get("/metrics")
                ready = http.get("/readyz")
                again = http.get("/metrics")  # while the first scrape's reads still run
        finally:
            proxy.close()
            # The reads still running fail now; a scrape in the next test must not wait on
            # them (one read per purpose, per process).
            wait_for(lambda: metrics_module.READS.idle() and health.READS.idle())
    for answer in (metrics, again):
        assert value(samples_of(answer.text), "gds_notify_redis_up") == 0
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["redis"]
    assert ready.json()["checks"]["redis"] == "unreachable: TooSlow"
    assert len(reads) == 1  # the second scrape waited on the first's reads


def test_a_read_past_its_deadline_is_waited_on_once_and_never_counts() -> None:
    """One read in flight per purpose: callers while it runs wait on it (no thread each);
    once its budget is spent they are told at once; the read after it starts afresh."""
    calls: list[int] = []
    release = threading.Event()

    def read() -> int:
        calls.append(1)
        release.wait(10)
        return len(calls)

    flight: SingleFlight[int] = SingleFlight("test-flight")
    for _ in range(3):
        with pytest.raises(TooSlow, match=r"within 0\.2 s"):
            flight.run(read, seconds=0.2)
    assert len(calls) == 1
    release.set()
    wait_for(lambda: flight._running is not None and flight._running.done())
    assert flight.run(read, seconds=5) == 2  # done already: a fresh read, not the stale one
    assert isinstance(TooSlow("x"), redis.RedisError)  # callers report it as Redis down


def test_the_apis_answers_are_counted_by_route_template_and_code(
    api_server: ApiServer,
) -> None:
    """A 500 or a run of 401s (a producer's rotated token) showed in no metric. Answers
    are counted by the route's template, never the path: a ping's key stays out."""
    COUNTS.flush()  # what earlier tests in this process counted goes to their Redis now
    before = scrape(f"{api_server.url}/metrics")
    # Each route's 500 is there at 0 before any: GdsNotifyApiErrors' increase() needs a
    # series to start below the first 500 (Medic's routes too, named without /medic/{key}).
    for route in ("/v1/notifications", "/ping/{key}/{slug}", "/heartbeat", "other"):
        key = ("gds_notify_http_responses_total", (("code", "500"), ("route", route)))
        assert key in before, route
    secret_key = "k" * 22
    with api_server.client() as http:
        assert http.post(
            "/v1/notifications", json={"recipient": "a@example.com", "subject": "x"}
        ).is_success
        assert http.post("/v1/notifications", json={"subject": "x"}).status_code == 422
        assert http.post("/v1/incidents/db-1/resolve").status_code == 202
        assert http.get(f"/ping/{secret_key}/backup").status_code == 404
        assert http.get("/no/such/path").status_code == 404
    with api_server.client(token=None) as stranger:
        assert stranger.post("/v1/notifications", json={}).status_code == 401

    def grew(samples: dict[Any, float], route: str, code: str) -> float:
        key = ("gds_notify_http_responses_total", (("code", code), ("route", route)))
        return samples.get(key, 0.0) - before.get(key, 0.0)

    expected = {
        ("/v1/notifications", "202"): 1,
        ("/v1/notifications", "422"): 1,
        ("/v1/notifications", "401"): 1,
        ("/v1/incidents/{dedup_key}/resolve", "202"): 1,
        ("/ping/{key}/{slug}", "404"): 1,
        ("other", "404"): 1,
    }
    after = wait_for(
        lambda: (
            (s := scrape(f"{api_server.url}/metrics"))
            and all(grew(s, *label) >= n for label, n in expected.items())
            and s
        )
    )
    assert {label: grew(after, *label) for label in expected} == expected
    text = httpx.get(f"{api_server.url}/metrics").text
    assert secret_key not in text
    assert "dedup_key:" not in text


def test_the_metrics_command_serves_the_same_pool(service_env: Any) -> None:
    tasks.enqueue(page(9))
    port = free_port()
    proc = subprocess.Popen(
        [GDS_NOTIFY, "metrics", "--port", str(port)],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _answers(url), timeout=20)
        s = scrape(url)
        assert value(s, "gds_notify_notifications_total", source="enqueue", outcome="accepted") == 1
        assert value(s, "gds_notify_queue_messages", queue="pagerduty") == 1
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert out.startswith(f"metrics on http://127.0.0.1:{port}/metrics")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_recoveries_are_counted_by_reason(api_server: ApiServer) -> None:
    """A page the broker lost (found at its pickup look), one whose worker died in its
    attempt, and a delivery that stalled."""
    lost = tasks.enqueue(page(3))
    stalled = tasks.enqueue(page(4))
    abandoned = tasks.enqueue(page(5))
    with engine().jobs.claim(abandoned, "pagerduty", ttl=0.2) as claim:  # and no record
        assert claim.lock is not None
    time.sleep(0.3)
    r = engine().redis
    queued = r.lrange("pagerduty", 0, -1)
    r.lrem("pagerduty", 1, next(str(m) for m in queued if f'"{lost}-pagerduty"' in str(m)))
    created = float((engine().jobs.get(lost) or {})["created_at"])
    before = scrape(f"{api_server.url}/metrics")
    assert value(before, "gds_notify_recovered_total", reason="lost") == 0
    assert value(before, "gds_notify_recovered_total", reason="abandoned") == 0
    assert value(before, "gds_notify_recovered_total", reason="stalled") == 0
    assert value(before, "gds_notify_recovered_total", reason="intake") == 0

    found = sweep(engine(), now=created + 11)
    assert sorted((s.job_id, s.reason) for s in found) == sorted(
        [(lost, "lost"), (abandoned, "abandoned")]
    )
    assert [s.job_id for s in sweep(engine(), now=created + 301)] == [stalled]
    after = scrape(f"{api_server.url}/metrics")
    assert value(after, "gds_notify_recovered_total", reason="lost") == 1
    assert value(after, "gds_notify_recovered_total", reason="abandoned") == 1
    assert value(after, "gds_notify_recovered_total", reason="stalled") == 1
    assert value(after, "gds_notify_recovered_total", reason="intake") == 0  # none was held
