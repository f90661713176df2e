"""Heartbeat monitoring end to end: real Redis, a real Celery worker, the PagerDuty sandbox
over HTTP, and windows of about a second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from sandbox.server import SandboxServer
from tests.conftest import TEAM_KEY, SandboxClient, wait_for
from tests.heartbeat_helpers import WriteCatalogue, service
from worker.job_request import InvalidJobError
from worker.redact import mask


@pytest.fixture
def pages(service_env: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(service_env)
    yield client
    client.close()


def check() -> Any:
    from worker.engine.heartbeats.paging import run_check
    from worker.engine.runtime import engine

    return run_check(engine())


def check_until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Run the checker every 0.1 s (as beat would) until ``predicate()`` holds."""

    def step() -> Any:
        check()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.1)


def keep_checking(seconds: float, beating: tuple[str, ...] = ()) -> None:
    """Check every 0.1 s for ``seconds``; the services in ``beating`` keep reporting."""
    import tasks

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for slug in beating:
            tasks.heartbeat(slug)
        check()
        time.sleep(0.1)


def state(slug: str) -> Any:
    from worker.engine.heartbeats.checker import read_states
    from worker.engine.runtime import engine

    return read_states(engine().redis).get(slug)


def test_a_silent_service_pages_once_with_every_field_and_resolves_when_it_is_back(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks

    catalogue(
        service("billing-api", window=1.0, grace=0.5, name="Billing API", routing_key_team="dba")
    )
    seen = tasks.heartbeat("billing-api")
    check()
    [incident] = check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-billing-api"))
    silent_for = time.time() - seen
    assert silent_for >= 1.5  # window + grace passed before anyone was paged

    assert incident["status"] == "triggered"
    assert incident["routing_key"] == mask(TEAM_KEY)  # the override team's key
    [event] = [e for e in pages.events() if e["body"].get("event_action") == "trigger"]
    body = event["body"]
    assert body["dedup_key"] == "medic-heartbeat-billing-api"
    assert body["links"] == [
        {"href": "https://runbooks.example/billing-api", "text": "Runbook: Billing API"}
    ]
    payload = body["payload"]
    assert payload["summary"] == "Heartbeat failure: Billing API"
    assert payload["severity"] == "error"  # P2
    assert payload["source"] == "medic"
    assert payload["component"] == "Billing API"
    assert payload["group"] == "payments"
    assert payload["class"] == "heartbeat_failure"
    details = payload["custom_details"]
    assert details["slug"] == "billing-api"
    assert details["team"] == "payments"
    assert details["priority"] == "P2"
    assert details["missed_heartbeats"] == 1
    assert details["heartbeats_in_window"] == 0
    assert details["last_seen"] == datetime.fromtimestamp(seen, UTC).isoformat(timespec="seconds")
    assert (details["window_seconds"], details["threshold"], details["grace_seconds"]) == (
        1,
        1,
        0.5,
    )
    assert details["runbook_url"] == "https://runbooks.example/billing-api"

    keep_checking(2.0)  # further misses
    assert len(pages.incidents()) == 1
    assert [e["body"]["event_action"] for e in pages.events()] == ["trigger"]

    tasks.heartbeat("billing-api")
    check_until(lambda: pages.incidents(status="resolved"))
    assert [e["body"]["event_action"] for e in pages.events()] == ["trigger", "resolve"]
    assert state("billing-api").status == "up"
    keep_checking(0.5)
    assert len(pages.events()) == 2


def test_a_service_that_keeps_reporting_is_never_paged(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks

    catalogue(service("steady", window=0.6))
    end = time.monotonic() + 3
    while time.monotonic() < end:
        tasks.heartbeat("steady")
        check()
        time.sleep(0.1)
    assert pages.events() == []
    assert state("steady").status == "up"


def test_a_reported_failure_pages_and_an_up_resolves(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks

    catalogue(service("etl", window=2))
    tasks.heartbeat("etl")
    check()
    tasks.heartbeat("etl", status="fail")  # enough heartbeats, but it says it is failing
    [incident] = check_until(lambda: pages.incidents(status="triggered"))
    details = pages.events()[-1]["body"]["payload"]["custom_details"]
    assert details["reason"] == "the service reported status fail"
    tasks.heartbeat("etl", status="up")
    check_until(lambda: pages.incidents(status="resolved"))
    assert incident["dedup_key"] == "medic-heartbeat-etl"


def quiet_early_checks() -> None:
    """As if the check a failure asks for were still queued (behind a busy ``pagerduty``
    queue): no early check is asked for until the next check starts."""
    from worker.engine import keys
    from worker.engine.runtime import engine

    engine().redis.set(keys.HEARTBEAT_CHECK_SOON, "1", px=60_000)


def unseen_failures() -> dict[str, Any]:
    from worker.engine.runtime import engine

    return engine().heartbeats.unseen_failures()


def test_a_failure_then_a_success_before_the_check_pages_once_and_resolves(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    """The check read only the newest heartbeat: a failure followed by a success before
    the check the failure asked for ran was never paged. It is kept until a check takes it
    in: that check opens the incident, saying when the service reported success since, and
    the next one resolves it. A failure with no success after it pages as before, once."""
    import tasks

    catalogue(service("etl", window=2) + service("still-failing", window=2))
    tasks.heartbeat("etl")
    tasks.heartbeat("still-failing")
    check()
    quiet_early_checks()
    failed = tasks.heartbeat("etl", status="fail")
    back = tasks.heartbeat("etl")
    tasks.heartbeat("still-failing", status="fail")
    assert set(unseen_failures()) == {"etl", "still-failing"}
    check()
    assert unseen_failures() == {}  # taken in by the check that paged them
    assert state("etl").status == state("still-failing").status == "down"
    wait_for(lambda: len(pages.incidents(status="triggered")) == 2)
    [etl] = pages.incidents(dedup_key="medic-heartbeat-etl")
    details = etl["payload"]["payload"]["custom_details"]
    assert details["reason"] == "the service reported status fail"
    assert details["reported_via"] == "fail"
    assert details["reported_at"] == datetime.fromtimestamp(failed, UTC).isoformat("T", "seconds")
    assert details["recovered_at"] == datetime.fromtimestamp(back, UTC).isoformat("T", "seconds")
    [other] = pages.incidents(dedup_key="medic-heartbeat-still-failing")
    assert "recovered_at" not in other["payload"]["payload"]["custom_details"]
    check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-etl", status="resolved"))
    assert state("etl").status == "up"
    keep_checking(0.5, beating=("etl",))  # the check runs again and again: nothing more
    actions = [(e["body"]["dedup_key"], e["body"]["event_action"]) for e in pages.events()]
    assert sorted(actions) == [
        ("medic-heartbeat-etl", "resolve"),
        ("medic-heartbeat-etl", "trigger"),
        ("medic-heartbeat-still-failing", "trigger"),
    ]
    assert state("still-failing").status == "down"


def test_a_failure_an_earlier_checker_paged_is_no_news_and_a_late_one_pages_once(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    """A checker of an earlier version (a rolling upgrade) pages a failure from the newest
    heartbeat and leaves it kept: the next check of this version must not page it again.
    A failure reported late (a Celery producer's ``at``, behind a backlog) is news: it
    pages once, saying when it was; and a later report dated before it does not replace
    it."""
    import tasks
    from worker.engine import keys
    from worker.engine.runtime import engine

    catalogue(service("etl", window=60) + service("late", window=60))
    tasks.heartbeat("etl")
    tasks.heartbeat("late")
    check()
    quiet_early_checks()
    tasks.heartbeat("etl", status="fail")
    kept = engine().redis.hget(keys.HEARTBEAT_FAILED, "etl")
    tasks.heartbeat("etl")
    check()  # pages it (and takes it in)
    check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-etl", status="resolved"))
    engine().redis.hset(keys.HEARTBEAT_FAILED, "etl", kept)  # as the earlier checker left it
    late = time.time() - 120
    tasks.heartbeat("late", status="fail", at=late)
    tasks.heartbeat("late", status="fail", at=late - 600)  # older still: it replaces nothing
    tasks.heartbeat("late")
    keep_checking(0.5, beating=("etl", "late"))
    assert unseen_failures() == {}  # taken in
    triggers = [e for e in pages.events() if e["body"]["event_action"] == "trigger"]
    assert sorted(e["body"]["dedup_key"] for e in triggers) == [
        "medic-heartbeat-etl",
        "medic-heartbeat-late",
    ]
    [paged] = [e for e in triggers if e["body"]["dedup_key"] == "medic-heartbeat-late"]
    details = paged["body"]["payload"]["custom_details"]
    assert details["reported_at"] == datetime.fromtimestamp(late, UTC).isoformat("T", "seconds")
    assert "recovered_at" in details


def test_a_failure_seen_by_two_overlapping_checks_pages_once_and_one_reported_meanwhile_waits(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    """Two evaluations that overlap (a lock that expired under a stalled checker) both see
    the failure: the compare-and-set lets one page it and take it in. A failure reported
    while a check runs is not the one it read: it is left for the next check (which finds
    the incident open already: one page)."""
    import tasks
    from worker.engine.heartbeats.checker import HeartbeatChecker
    from worker.engine.heartbeats.paging import sender
    from worker.engine.runtime import engine

    catalogue(service("etl", window=60))
    tasks.heartbeat("etl")
    check()
    quiet_early_checks()
    tasks.heartbeat("etl", status="fail")
    tasks.heartbeat("etl")
    e = engine()
    services = e.catalogue()
    assert services is not None
    first = HeartbeatChecker(e.redis, e.heartbeats, e.locks, 0.2)
    second = HeartbeatChecker(e.redis, e.heartbeats, e.locks, 0.2)
    plan_a = first.plan(services)
    plan_b = second.plan(services)
    assert plan_a.write["etl"].outbox
    assert plan_b.write["etl"].outbox
    tasks.heartbeat("etl", status="fail")  # while the checks run
    tasks.heartbeat("etl")
    report_a = first.commit(plan_a, sender(e))
    report_b = second.commit(plan_b, sender(e))
    assert (len(report_a.sent), len(report_b.sent), report_b.conflicts) == (1, 0, 1)
    assert set(unseen_failures()) == {"etl"}  # the one reported meanwhile
    check()
    assert unseen_failures() == {}
    assert state("etl").status == "down"  # its incident still open: nothing new to page
    wait_for(lambda: pages.incidents(status="triggered"))
    check_until(lambda: pages.incidents(status="resolved"))
    keep_checking(0.5, beating=("etl",))
    assert [e["body"]["event_action"] for e in pages.events()] == ["trigger", "resolve"]


def test_a_page_intake_refuses_is_dead_lettered_and_holds_back_no_later_page(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks
    from worker.engine import keys
    from worker.engine.heartbeats.evaluation import Action
    from worker.engine.replay import replay
    from worker.engine.runtime import engine

    catalogue(service("etl", window=2))
    tasks.heartbeat("etl", status="fail")
    check_until(lambda: pages.incidents(status="triggered"))
    # A trigger intake refuses for good is still in the outbox (a state an older version
    # wrote, say); the service then recovers.
    stuck = state("etl")
    bad = {"recipient": "Etl", "subject": "s", "body": "b", "priority": "urgent"}
    stuck.outbox = [Action(kind="trigger", dedup_key="medic-heartbeat-x", team="t", request=bad)]
    engine().redis.hset(keys.HEARTBEAT_STATE, "etl", stuck.dump())
    tasks.heartbeat("etl", status="up")
    check_until(lambda: pages.incidents(status="resolved"))
    check()
    assert state("etl").outbox == []
    [letter] = engine().dead_letters.list()
    assert letter["channel"] == "intake"
    assert letter["reason"].startswith("heartbeat trigger for medic-heartbeat-x refused at intake")
    assert "priority" in letter["reason"]
    assert letter["payload"] == {"args": [bad]}
    with pytest.raises(InvalidJobError, match="priority"):
        replay(engine(), letter["id"])


def test_maintenance_suppresses_the_trigger_and_pages_a_service_still_down_when_it_ends(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    now = datetime.now(UTC)
    ends = now + timedelta(seconds=3)
    window = (
        f"[[services.db.maintenance]]\nstart = {now.isoformat(timespec='seconds')}\n"
        f"end = {ends.isoformat(timespec='milliseconds')}\n"
    )
    catalogue(service("db", window=0.5, extra=window))
    check()
    check_until(lambda: getattr(state("db"), "status", None) == "down")
    assert state("db").suppressed
    while datetime.now(UTC) < ends - timedelta(seconds=0.3):
        check()
        time.sleep(0.1)
    assert pages.events() == []  # down all along, but in maintenance
    [incident] = check_until(lambda: pages.incidents(status="triggered"))
    assert datetime.fromtimestamp(incident["created_at"], UTC) >= ends


def test_a_resolve_goes_out_inside_a_maintenance_window(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks

    catalogue(service("api", window=0.5))
    check()
    check_until(lambda: pages.incidents(status="triggered"))
    start = datetime.now(UTC) - timedelta(minutes=1)
    catalogue(
        service(
            "api",
            window=0.5,
            extra=(
                f"[[services.api.maintenance]]\nstart = {start.isoformat(timespec='seconds')}\n"
                f"end = {(start + timedelta(hours=1)).isoformat(timespec='seconds')}\n"
            ),
        )
    )
    tasks.heartbeat("api")
    check_until(lambda: pages.incidents(status="resolved"))


def test_two_checkers_running_at_once_open_one_incident(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    catalogue("".join(service(f"svc-{i}", window=0.5) for i in range(20)))
    check()
    stop = threading.Event()
    errors: list[BaseException] = []

    def checker() -> None:
        try:
            while not stop.is_set():
                check()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=checker) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(pages.incidents()) >= 20, timeout=20)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    incidents = pages.incidents()
    assert sorted(i["dedup_key"] for i in incidents) == sorted(
        f"medic-heartbeat-svc-{i}" for i in range(20)
    )
    assert all(i["alert_count"] == 1 for i in incidents)


def test_overlapping_evaluations_commit_each_transition_once(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    """Even without the lock (one that expired under a stalled checker), the state's
    compare-and-set lets only one of two overlapping evaluations page."""
    from worker.engine.heartbeats.checker import HeartbeatChecker
    from worker.engine.heartbeats.paging import sender
    from worker.engine.runtime import engine

    catalogue(service("lonely", window=0.3))
    check()
    time.sleep(0.5)
    spec_catalogue = engine().catalogue()
    assert spec_catalogue is not None
    e = engine()
    first = HeartbeatChecker(e.redis, e.heartbeats, e.locks, 0.2)
    second = HeartbeatChecker(e.redis, e.heartbeats, e.locks, 0.2)
    send_action = sender(e)
    plan_a = first.plan(spec_catalogue)
    plan_b = second.plan(spec_catalogue)
    assert plan_a.write["lonely"].outbox
    assert plan_b.write["lonely"].outbox
    report_a = first.commit(plan_a, send_action)
    report_b = second.commit(plan_b, send_action)
    assert (len(report_a.sent), len(report_b.sent), report_b.conflicts) == (1, 0, 1)
    wait_for(lambda: pages.incidents())
    time.sleep(0.5)
    assert len(pages.events()) == 1


def test_after_a_checker_outage_no_service_is_paged_before_a_full_window(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks

    catalogue(service("a", window=1.5) + service("b", window=1.5))
    for slug in ("a", "b"):
        tasks.heartbeat(slug)
    check()
    keep_checking(1.7, beating=("a", "b"))  # up after their first window
    for slug in ("a", "b"):
        assert state(slug).status == "up"
    time.sleep(2.5)  # the monitor is down longer than a window; the services go silent
    resumed = time.time()
    check()
    assert pages.events() == []
    assert {state(s).status for s in ("a", "b")} == {"failing"}
    check_until(lambda: len(pages.incidents()) == 2)
    first_page = min(i["created_at"] for i in pages.incidents())
    assert first_page - resumed >= 1.5  # one full window after the checker came back


def test_a_checker_slow_for_good_still_pages_a_silent_service(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    """Checks every 1.6 s against a 1 s window (at an interval of 0.2 s an outage is a gap
    over 1.4 s), as when most checks expire behind a backed-up queue: the first late check
    holds, as after an outage; the next ones are the checker's pace and page. (A hold at
    each never paged it.)"""
    import tasks

    catalogue(service("slow", window=1.0))
    tasks.heartbeat("slow")
    check()
    keep_checking(1.2, beating=("slow",))
    assert state("slow").status == "up"
    statuses = []
    for _ in range(3):  # the service falls silent as the checker slows down
        time.sleep(1.6)
        check()
        statuses.append(state("slow").status)
    assert statuses == ["failing", "down", "down"]
    wait_for(lambda: pages.incidents(dedup_key="medic-heartbeat-slow"))
    assert len(pages.events()) == 1


def test_a_removed_service_is_resolved_and_forgotten_and_starts_new_when_added_again(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    import tasks
    from worker.engine import keys
    from worker.engine.heartbeats.store import Ping
    from worker.engine.runtime import engine

    both = service("gone", window=0.5) + service("stays", window=0.5)
    catalogue(both)
    check()
    check_until(lambda: len(pages.incidents(status="triggered")) == 2)  # both silent
    catalogue(service("stays", window=0.5))
    check()  # missing at one check: noted, nothing resolved (a file caught half written)
    assert state("gone").missing_since is not None
    assert state("gone").incident is not None
    catalogue(both)  # the file whole again
    check()
    assert state("gone").missing_since is None
    tasks.heartbeat("gone", "fail")  # its last word before it is removed
    gone = engine().service("gone")
    assert gone is not None
    catalogue(service("stays", window=0.5))
    removed_at = time.monotonic()
    # An API host whose file still lists it takes a run's start and a failure no check of
    # this catalogue takes in.
    engine().heartbeats.record(gone, Ping(kind="start", rid="r1"))
    engine().heartbeats.record(gone, Ping(kind="fail", via="/fail"))
    check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-gone", status="resolved"))
    assert time.monotonic() - removed_at >= 20 * 0.2  # missing at every check for 20
    check_until(lambda: state("gone") is None)
    # Forgotten in the step that deleted its state: its last report, runs and failure.
    assert "gone" not in engine().heartbeats.last()
    assert "gone" not in unseen_failures()
    assert not engine().redis.exists(keys.heartbeat_runs("gone"))
    assert state("stays").incident is not None
    assert pages.incidents(dedup_key="medic-heartbeat-stays", status="triggered")

    # Kept, the old incident made this outage look paged already: now it is a new service,
    # with its first window to report (its old /fail forgotten too), and paged again.
    catalogue(both)
    check()
    assert state("gone").status == "new"
    assert state("gone").incident is None
    check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-gone", status="triggered"))
    last_page = pages.events()[-1]["body"]["payload"]["custom_details"]
    assert last_page["reason"].startswith("0 of 1 heartbeats")  # silence, not the old /fail


def test_a_worker_without_the_services_file_forgets_no_state(
    catalogue: WriteCatalogue,
    pages: SandboxClient,
    celery_worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that knows only the services registered at run time (its
    HEARTBEAT_SERVICES_FILE unset) cannot tell a removed service from the file's."""
    from config.catalogue import ServiceSpec
    from tests.conftest import reconfigure
    from worker.engine.heartbeats.registry import Registration
    from worker.engine.runtime import engine

    catalogue(service("in-file", window=0.5))
    check()
    check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-in-file"))
    spec = ServiceSpec.model_validate(
        {"slug": "registered", "name": "R", "team": "payments", "priority": "P3", "window": 60}
    )
    assert engine().registry.add(Registration.new(spec))
    monkeypatch.delenv("HEARTBEAT_SERVICES_FILE")
    reconfigure()
    assert check() is not None  # a check over the registered service alone
    assert state("in-file").incident is not None
    assert state("registered").status == "new"
    time.sleep(0.3)
    assert pages.incidents(dedup_key="medic-heartbeat-in-file", status="resolved") == []


def test_a_redis_wipe_counts_as_an_outage_too(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any, redis_url: str
) -> None:
    catalogue(service("w", window=0.8))
    check()
    keep_checking(0.3)
    redis.Redis.from_url(redis_url).flushdb()  # what a restart without persistence leaves
    wiped = time.time()
    check()
    check_until(lambda: pages.incidents())
    assert pages.incidents()[0]["created_at"] - wiped >= 0.8


def test_a_recurring_cron_window_in_a_non_utc_time_zone_is_honoured(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    kolkata = datetime.now(ZoneInfo("Asia/Kolkata")) - timedelta(minutes=1)
    cron = f"{kolkata.minute} {kolkata.hour} * * *"

    def recurring(slug: str, zone: str) -> str:
        extra = (
            f'[[services.{slug}.maintenance]]\ncron = "{cron}"\nduration = "10m"\n'
            f'timezone = "{zone}"\n'
        )
        return service(slug, window=0.5, extra=extra)

    # The same cron line: in Kolkata's time it is on now; read as UTC it is hours away.
    catalogue(recurring("in-kolkata", "Asia/Kolkata") + recurring("read-as-utc", "UTC"))
    check()
    check_until(lambda: pages.incidents(dedup_key="medic-heartbeat-read-as-utc"))
    keep_checking(0.5)
    assert pages.incidents(dedup_key="medic-heartbeat-in-kolkata") == []
    assert state("in-kolkata").status == "down"
    assert state("in-kolkata").suppressed


def test_the_default_routing_key_pages_for_a_team_without_one(
    catalogue: WriteCatalogue, pages: SandboxClient, celery_worker: Any
) -> None:
    from tests.conftest import ROUTING_KEY

    catalogue(service("web", window=0.4, team="frontend", priority="P4"))
    check()
    [incident] = check_until(lambda: pages.incidents())
    assert incident["routing_key"] == mask(ROUTING_KEY)
    assert incident["severity"] == "info"  # P4, and paged although P4 is below CRITICAL


def test_heartbeats_from_any_celery_client_and_refusals_are_counted(
    catalogue: WriteCatalogue, celery_worker: Any
) -> None:
    from celery import Celery

    import tasks
    from config.catalogue import UnknownServiceError
    from config.settings import get_settings
    from worker.engine import keys
    from worker.engine.heartbeats.store import HeartbeatStore
    from worker.engine.runtime import engine

    catalogue(service("known", window=5))
    client = Celery(broker=get_settings().redis_url)
    try:
        client.send_task("heartbeat", args=["known"])
        # Stored before the fail is sent: four worker threads would take them in any order.
        wait_for(lambda: engine().redis.zcard(keys.heartbeats("known")) == 1)
        client.send_task("heartbeat", kwargs={"slug": "known", "status": "fail"})
        client.send_task("heartbeat", args=["nobody"])
        client.send_task("heartbeat", args=["known", "sideways"])
        client.send_task("heartbeat", args=["known", "up", float("inf")])  # JSON's Infinity
    finally:
        client.close()
    store = HeartbeatStore(engine().redis)
    wait_for(lambda: store.refused() == {"unknown_slug": 1, "invalid": 2})
    wait_for(lambda: store.last()["known"].status == "fail")
    assert engine().redis.zcard(keys.heartbeats("known")) == 1
    assert not engine().redis.exists(keys.heartbeats("nobody"))
    assert "nobody" not in store.last()

    with pytest.raises(UnknownServiceError, match="slug: unknown service 'ghost'"):
        tasks.heartbeat("ghost")
    with pytest.raises(tasks.InvalidHeartbeatError, match="status: must be 'up' or 'fail'"):
        tasks.heartbeat("known", status="down")
    with pytest.raises(ValueError, match=r"at: .* ahead of the server's clock"):
        tasks.heartbeat("known", at=time.time() + 3600)
    for never in (float("nan"), float("-inf"), 10**400):
        with pytest.raises(tasks.InvalidHeartbeatError, match="at: must be a finite number"):
            tasks.heartbeat("known", at=never)
    assert store.refused() == {"unknown_slug": 2, "invalid": 7}
    past = datetime.now(UTC) - timedelta(seconds=30)
    assert abs(tasks.heartbeat("known", at=past.isoformat()) - past.timestamp()) < 0.001
    # A sender's clock two minutes fast: the heartbeat counts from now, and a failure
    # reported right after it is the newest word.
    ahead = tasks.heartbeat("known", at=time.time() + 120)
    assert ahead <= store.now()
    tasks.heartbeat("known", status="fail")
    assert store.last()["known"].status == "fail"


def test_heartbeats_are_bounded_per_service(catalogue: WriteCatalogue) -> None:
    import tasks
    from worker.engine import keys
    from worker.engine.runtime import engine

    catalogue(service("chatty", window=60))
    for _ in range(200):
        tasks.heartbeat("chatty")
    assert engine().redis.zcard(keys.heartbeats("chatty")) == 32
    # Kept a week and more, not the window alone: a window edited longer (a job moved
    # from every minute to daily) still finds the last heartbeat.
    assert 7 * 86_400 < engine().redis.ttl(keys.heartbeats("chatty")) <= 8 * 86_400
