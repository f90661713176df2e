"""The per-service state machine, step by step (pure: no Redis, no clock)."""

from __future__ import annotations

from typing import Any

from config.catalogue import ServiceSpec
from worker.engine.heartbeats.evaluation import (
    REMOVED,
    Observation,
    ReportedFailure,
    ServiceState,
    iso,
    removed,
    starts_hold,
    step,
)

INTERVAL = 1.0


def spec(**changes: Any) -> ServiceSpec:
    fields: dict[str, Any] = {
        "slug": "svc",
        "name": "Svc",
        "team": "ops",
        "priority": "P1",
        "window": 10,
        "runbook_url": "https://runbooks.example/svc",
    }
    return ServiceSpec.model_validate(fields | changes)


GOOD = Observation(count=1, last_at=100.0, last_status="up", maintenance_until=None)
SILENT = Observation(count=0, last_at=None, last_status=None, maintenance_until=None)


class Run:
    """Drives one service through checks every second, as a checker would."""

    def __init__(self, service: ServiceSpec, start: float = 1000.0) -> None:
        self.spec = service
        self.now = start
        self.state: ServiceState | None = None
        self.sent: list[str] = []
        self.requests: list[dict[str, Any]] = []  # each trigger's notification

    def check(self, obs: Observation, gap: float | None = INTERVAL, advance: float = 1.0) -> str:
        self.now += advance
        self.state = step(self.spec, self.state, obs, self.now, gap, INTERVAL)
        self.sent += [a.kind for a in self.state.outbox]
        self.requests += [a.request for a in self.state.outbox if a.request is not None]
        self.state.outbox = []  # the checker sends and clears them
        return self.state.status

    def checks(self, obs: Observation, n: int) -> list[str]:
        return [self.check(obs) for _ in range(n)]


def up(service: ServiceSpec) -> Run:
    """A run of ``service`` that has reported through its first window: up."""
    run = Run(service)
    run.check(GOOD, gap=None)
    run.checks(GOOD, int(service.window) + 1)
    return run


def test_a_new_service_gets_one_full_window_before_it_can_be_paged() -> None:
    run = Run(spec(window=10, grace=5))
    statuses = [run.check(SILENT, gap=None), *run.checks(SILENT, 14)]
    assert set(statuses) == {"new"}
    assert run.sent == []
    assert run.check(SILENT) == "down"
    assert run.sent == ["trigger"]


def test_silent_then_back_pages_once_and_resolves_once() -> None:
    run = Run(spec())
    run.check(GOOD, gap=None)
    run.checks(GOOD, 12)
    assert run.state is not None
    assert run.state.status == "up"
    assert run.checks(SILENT, 5) == ["down"] * 5
    assert run.sent == ["trigger"]
    assert run.check(GOOD) == "up"
    assert run.sent == ["trigger", "resolve"]


def test_flap_settings_need_consecutive_checks_both_ways() -> None:
    run = up(spec(flap={"failures_before_page": 3, "successes_before_resolve": 2}))
    assert run.checks(SILENT, 2) == ["failing", "failing"]
    assert run.check(GOOD) == "up"  # the streak is broken: start again
    assert run.checks(SILENT, 3) == ["failing", "failing", "down"]
    assert run.sent == ["trigger"]
    assert run.check(GOOD) == "down"  # one good check is not enough
    assert run.check(SILENT) == "down"
    assert run.checks(GOOD, 2) == ["down", "up"]
    assert run.sent == ["trigger", "resolve"]


def test_a_reported_failure_counts_even_with_enough_heartbeats() -> None:
    run = up(spec())
    failed = Observation(count=5, last_at=1.0, last_status="fail", maintenance_until=None)
    assert run.check(failed) == "down"
    assert run.state is not None
    assert run.state.reason == "the service reported status fail"


def test_maintenance_stops_the_trigger_and_pages_when_it_ends_if_still_down() -> None:
    run = up(spec())
    until = run.now + 3.5
    in_window = Observation(count=0, last_at=None, last_status=None, maintenance_until=until)
    assert run.checks(in_window, 3) == ["down"] * 3
    assert run.state is not None
    assert run.state.suppressed
    assert run.sent == []
    assert run.check(SILENT) == "down"
    assert run.sent == ["trigger"]


def test_a_resolve_goes_out_inside_a_maintenance_window() -> None:
    run = up(spec())
    run.check(SILENT)
    in_window_good = Observation(count=1, last_at=1.0, last_status="up", maintenance_until=4e9)
    assert run.check(in_window_good) == "up"
    assert run.sent == ["trigger", "resolve"]


def test_recovery_inside_maintenance_without_an_incident_sends_nothing() -> None:
    run = up(spec())
    quiet = Observation(count=0, last_at=None, last_status=None, maintenance_until=4e9)
    run.checks(quiet, 3)
    assert run.check(GOOD) == "up"
    assert run.sent == []


def test_after_a_checker_outage_every_service_waits_a_full_window() -> None:
    run = up(spec(window=10))
    # The checker was away for a minute; the service has been silent all that time.
    assert run.check(SILENT, gap=60, advance=60) == "failing"
    assert run.checks(SILENT, 9) == ["failing"] * 9
    assert run.sent == []
    assert run.check(SILENT) == "down"
    assert run.sent == ["trigger"]


def late_checks(run: Run, gaps: list[float], held_ago: float | None) -> list[str]:
    """Checks after each of ``gaps`` seconds, a silent service; ``held_ago``: how long before
    the first a check last held silence (None: never), as the checker keeps it."""
    statuses: list[str] = []
    held_at = None if held_ago is None else run.now - held_ago
    for gap in gaps:
        run.now += gap
        since = None if held_at is None else run.now - held_at
        if starts_hold(run.spec, gap, since, INTERVAL):
            held_at = run.now
        run.state = step(run.spec, run.state, SILENT, run.now, gap, INTERVAL, since)
        run.sent += [a.kind for a in run.state.outbox]
        run.state.outbox = []
        statuses.append(run.state.status)
    return statuses


def test_a_checker_slow_for_good_holds_once_then_pages_silence() -> None:
    """Checks that keep coming later than a window (most expiring behind a backed-up
    queue) are the checker's pace, not an outage each: the first holds, as after an
    outage; the next ones page."""
    run = up(spec(window=10))
    assert late_checks(run, [30, 30, 30], held_ago=None) == ["failing", "down", "down"]
    assert run.sent == ["trigger"]


def test_late_checks_between_checks_on_time_page_silence_too() -> None:
    """Late and on-time checks in turn (expired checks at random): each late one after an
    on-time one is no new outage either."""
    run = up(spec(window=10))
    statuses = late_checks(run, [30, 1] * 4, held_ago=None)
    assert statuses[:2] == ["failing", "failing"]
    assert statuses[-1] == "down"
    assert run.sent == ["trigger"]


def test_a_checker_slower_than_the_hold_again_interval_pages_silence_too() -> None:
    """Checks 700 s apart (and a service whose window is longer than that): a gap that
    begins at the check that held holds nothing, so silence is paged between holds."""
    for window, gap in ((10, 700), (900, 1_000)):
        run = up(spec(window=window))
        statuses = late_checks(run, [gap] * 6, held_ago=None)
        assert "down" in statuses, (window, statuses)
        assert run.sent == ["trigger"], (window, run.sent)


def test_an_outage_long_after_the_last_hold_holds_again() -> None:
    """A late check, then later a real outage of the monitor: its services get their full
    window again, so the outage pages no team."""
    run = up(spec(window=10))
    late_checks(run, [30], held_ago=None)  # held; the service reports again
    run.checks(GOOD, 20)
    statuses = late_checks(run, [3_600, 1, 1], held_ago=660)
    assert statuses == ["failing", "failing", "failing"]
    assert run.sent == []
    # Ten minutes after a hold, not before: a second outage inside them pages.
    run2 = up(spec(window=10))
    assert late_checks(run2, [300], held_ago=200) == ["down"]


def test_a_short_gap_is_not_an_outage() -> None:
    run = up(spec(window=10))
    assert run.check(SILENT, gap=3, advance=3) == "down"


def test_an_open_incident_still_resolves_during_the_hold() -> None:
    run = up(spec(window=10))
    run.check(SILENT)
    assert run.check(GOOD, gap=600, advance=600) == "up"
    assert run.sent == ["trigger", "resolve"]


def test_a_flapping_service_opens_at_most_storm_incidents_per_period() -> None:
    run = up(spec(flap={"storm_incidents": 3, "storm_period": "10m"}))
    for _ in range(20):  # up, down, up, down ... once a second for 40 s
        run.check(SILENT)
        run.check(GOOD)
    assert run.sent.count("trigger") == 3
    assert run.sent.count("resolve") == 2
    assert run.state is not None
    assert run.state.status == "down"
    assert run.state.reason is not None
    assert "storm" in run.state.reason
    # Once the first incident is older than the period, the held one resolves.
    assert run.check(GOOD, advance=600) == "up"
    assert run.sent.count("resolve") == 3


def test_a_steady_service_does_not_rewrite_its_state() -> None:
    run = up(spec())
    before = run.state
    run.check(GOOD)
    assert run.state == before


def test_the_trigger_request_has_the_documented_format() -> None:
    service = spec(
        slug="billing-api",
        name="Billing API",
        team="payments",
        priority="P3",
        window=300,
        threshold=3,
        grace=30,
        runbook_url="https://runbooks.example/billing",
        routing_key_team="dba",
    )
    run = Run(service)
    run.check(Observation(3, 1000.0, "up", None), gap=None)
    run.checks(Observation(3, 1000.0, "up", None), 330)
    state = step(service, run.state, Observation(1, 1_763_900_000.0, "up", None), 2000.0, 1.0, 1.0)
    [action] = state.outbox
    assert action.kind == "trigger"
    assert action.team == "dba"
    request = action.request
    assert request is not None
    assert request["subject"] == "Heartbeat failure: Billing API"
    assert request["channel"] == "pagerduty"
    assert request["team"] == "dba"
    assert request["idempotency_id"] == "medic-heartbeat-billing-api@2000000"
    meta = request["metadata"]
    assert meta["source"] == "medic"
    assert meta["severity"] == "warning"
    assert meta["component"] == "Billing API"
    assert meta["group"] == "payments"
    assert meta["class"] == "heartbeat_failure"
    assert meta["dedup_key"] == "medic-heartbeat-billing-api"
    assert meta["links"] == [
        {"href": "https://runbooks.example/billing", "text": "Runbook: Billing API"}
    ]
    assert meta["custom_details"] == {
        "slug": "billing-api",
        "team": "payments",
        "priority": "P3",
        "missed_heartbeats": 2,
        "heartbeats_in_window": 1,
        "last_seen": "2025-11-23T12:13:20+00:00",
        "window_seconds": 300.0,
        "threshold": 3,
        "grace_seconds": 30.0,
        "runbook_url": "https://runbooks.example/billing",
        "reason": "1 of 3 heartbeats within 300 s (+30 s grace)",
    }


FAILED = Observation(count=1, last_at=1.0, last_status="fail", maintenance_until=None)


def test_a_reported_failure_pages_even_while_a_new_service_is_held() -> None:
    """The hold is for silence; a service that says it failed is news at once."""
    run = Run(spec(window=60))
    assert run.check(SILENT, gap=None) == "new"
    assert run.check(FAILED) == "down"
    assert run.sent == ["trigger"]


def test_a_run_longer_than_max_duration_pages_and_its_finish_resolves() -> None:
    run = up(spec(max_duration=5))
    started = run.now
    running = Observation(
        count=1, last_at=1.0, last_status="up", maintenance_until=None, running_since=started
    )
    assert run.checks(running, 5) == ["up"] * 5  # 5 s: still within max_duration
    assert run.check(running) == "down"
    assert run.state is not None
    assert run.state.reason is not None
    assert run.state.reason.startswith("ran too long: started at")
    assert run.check(GOOD) == "up"  # finished: the run is gone
    assert run.sent == ["trigger", "resolve"]


def test_a_muted_service_is_shown_down_but_never_paged_until_unmuted() -> None:
    run = up(spec(muted=True))
    assert run.checks(SILENT, 3) == ["down"] * 3
    assert run.state is not None
    assert run.state.suppressed
    assert run.state.reason is not None
    assert run.state.reason.endswith("; muted")
    assert run.sent == []
    run.spec = spec(muted=False)
    assert run.check(SILENT) == "down"
    assert run.sent == ["trigger"]


def test_deactivating_a_service_resolves_its_incident_and_watches_it_no_more() -> None:
    run = up(spec())
    run.check(SILENT)
    assert run.sent == ["trigger"]
    run.spec = spec(active=False)
    assert run.checks(SILENT, 5) == ["inactive"] * 5
    assert run.sent == ["trigger", "resolve"]
    run.spec = spec(active=True)
    assert run.check(SILENT) == "new"  # back: a full window to report first
    assert run.sent == ["trigger", "resolve"]


def test_a_failure_reported_before_deactivation_does_not_page_when_active_again() -> None:
    """Medic's DOWN, then {"active": 0} (resolved), then {"active": 1}: the old DOWN paged
    again at the next check, with no window to report first."""
    run = up(spec())
    failed = Observation(count=0, last_at=run.now, last_status="fail", maintenance_until=None)
    assert run.check(failed) == "down"
    run.spec = spec(active=False)
    assert run.checks(failed, 3) == ["inactive"] * 3
    run.spec = spec(active=True)
    assert run.checks(failed, 3) == ["new"] * 3
    assert run.sent == ["trigger", "resolve"]
    # Silent since, past its window: paged for the silence, counting what it missed.
    assert "down" in run.checks(failed, 20)
    assert run.sent == ["trigger", "resolve", "trigger"]
    details = run.requests[-1]["metadata"]["custom_details"]
    assert details["reason"].startswith("0 of 1 heartbeats within")
    assert details["missed_heartbeats"] == 1
    run.spec = spec(active=False)
    run.check(failed)
    run.spec = spec(active=True)
    assert run.check(failed) == "new"
    again = Observation(count=0, last_at=run.now + 0.5, last_status="fail", maintenance_until=None)
    assert run.check(again) == "down"  # a failure reported since is news at once
    assert run.sent == ["trigger", "resolve", "trigger", "resolve", "trigger"]


def test_a_run_started_before_deactivation_does_not_page_when_active_again() -> None:
    run = up(spec(max_duration=60))
    hung = Observation(
        count=1, last_at=run.now, last_status="up", maintenance_until=None, running_since=run.now
    )
    run.spec = spec(max_duration=60, active=False)
    assert run.checks(hung, 100) == ["inactive"] * 100
    run.spec = spec(max_duration=60, active=True)
    assert run.checks(hung, 3) == ["up"] * 3  # its old /start is no run of this life
    assert run.sent == []


def test_an_incident_resolves_on_the_routing_key_it_was_opened_on() -> None:
    """The service's team changes while its incident is open (the file is edited, or
    Medic's POST /service/{name} names another team): the resolve still goes to the key
    the trigger paged, or PagerDuty would leave that incident open for good."""
    run = up(spec(team="dba"))
    run.check(SILENT)
    assert run.state is not None
    assert run.state.incident is not None
    assert run.state.incident_team == "dba"
    # An older version reading this state: its Incident refuses fields it does not know.
    assert "team" not in run.state.model_dump()["incident"]
    run.spec = spec(team="web")
    run.now += 1
    run.state = step(run.spec, run.state, GOOD, run.now, INTERVAL, INTERVAL)
    [resolve] = run.state.outbox
    assert (resolve.kind, resolve.team) == ("resolve", "dba")
    # A state written before incidents kept their team resolves on the service's team.
    old = ServiceState.model_validate(
        {
            "status": "down",
            "since": 1.0,
            "incident": {"dedup_key": "medic-heartbeat-svc", "idempotency_id": "x", "opened_at": 1},
        }
    )
    [resolve] = step(run.spec, old, GOOD, run.now + 1, INTERVAL, INTERVAL).outbox
    assert resolve.team == "web"


def test_a_reported_failure_pages_at_the_first_failing_check() -> None:
    """failures_before_page guards against a blip of silence, not against a service that
    says it failed (the README's promise)."""
    run = up(spec(flap={"failures_before_page": 3}))
    assert run.check(FAILED) == "down"
    assert run.sent == ["trigger"]


def recovered(run: Run, via: str = "/fail", body: str | None = None) -> Observation:
    """What a check sees after the service reported a failure, then a success, since the
    last check: the newest heartbeat is the success; the failure is kept until taken in."""
    failure = ReportedFailure(id="f1", at=run.now - 4.0, via=via, body=body)
    return Observation(
        count=1,
        last_at=run.now - 2.0,
        last_status="up",
        maintenance_until=None,
        reported=failure,
    )


def test_a_failure_followed_by_a_success_before_the_check_still_pages_once() -> None:
    """The check that took the failure in opens the incident, saying the service has
    reported success since (and when); the next good check resolves it."""
    run = up(spec(flap={"failures_before_page": 3}))
    seen = recovered(run, via="exit 3", body="disk full\nrolled back")
    failed_at, back_at = iso(seen.reported.at), iso(seen.last_at)  # type: ignore[union-attr]
    assert failed_at != back_at
    assert run.check(seen) == "down"
    assert run.sent == ["trigger"]
    assert run.state is not None
    assert run.state.reason == (
        f"the service reported status fail at {failed_at}; success reported since, at {back_at}"
    )
    request = run.requests[0]
    details = request["metadata"]["custom_details"]
    assert details["reason"] == "the service reported status fail"
    assert details["reported_via"] == "exit 3"
    assert (details["reported_at"], details["recovered_at"]) == (failed_at, back_at)
    assert details["missed_heartbeats"] == 0
    assert "reported_output" not in details  # only a file entry with page_output quotes it
    assert "has reported success since" in request["body"]
    assert run.check(GOOD) == "up"
    assert run.sent == ["trigger", "resolve"]
    assert run.checks(GOOD, 3) == ["up"] * 3
    assert run.sent == ["trigger", "resolve"]


def test_a_reported_failure_taken_in_while_paged_muted_or_inactive_pages_nothing_more() -> None:
    run = up(spec())
    run.check(SILENT)
    assert run.sent == ["trigger"]
    assert run.check(recovered(run)) == "down"  # already paged: the same incident
    assert run.check(GOOD) == "up"
    assert run.sent == ["trigger", "resolve"]
    muted = up(spec(muted=True))
    assert muted.check(recovered(muted)) == "down"
    assert muted.state is not None
    assert muted.state.suppressed
    muted.spec = spec(muted=False)
    assert muted.check(GOOD) == "up"  # it failed and recovered while muted: no page
    assert muted.sent == []
    inactive = up(spec(active=False))
    assert inactive.check(recovered(inactive)) == "inactive"
    inactive.spec = spec(active=True)
    before = recovered(inactive)  # reported before it was made active again
    assert inactive.check(before) == "up"  # active again, and it reports
    assert inactive.sent == []


def test_a_removed_service_resolves_drops_its_unsent_trigger_then_is_forgotten() -> None:
    run = up(spec(window=10))
    run.now += 1
    down = step(run.spec, run.state, SILENT, run.now, INTERVAL, INTERVAL)
    assert [a.kind for a in down.outbox] == ["trigger"]  # queued, not sent yet

    noted = removed(down, run.now + 1, INTERVAL)
    assert noted is not None
    assert noted.missing_since == run.now + 1
    assert noted.incident is not None  # not yet: a file caught half written, say
    assert removed(noted, run.now + 1 + 19 * INTERVAL, INTERVAL) is noted
    # Listed again at one check: the count starts over.
    assert step(run.spec, noted, GOOD, run.now + 2, INTERVAL, INTERVAL).missing_since is None

    left = removed(noted, run.now + 1 + 20 * INTERVAL, INTERVAL)
    assert left is not None
    assert [(a.kind, a.team) for a in left.outbox] == [("resolve", "ops")]
    assert (left.status, left.incident, left.reason) == ("inactive", None, REMOVED)
    left.outbox = []  # sent
    assert removed(left, run.now + 30 * INTERVAL, INTERVAL) is None


def test_a_removed_service_whose_incident_team_was_not_kept_is_left_as_it_is() -> None:
    run = up(spec(window=10))
    run.check(SILENT)
    assert run.state is not None
    assert run.state.incident is not None
    legacy = run.state.model_copy(update={"incident_team": None, "missing_since": run.now})
    assert removed(legacy, run.now + 100 * INTERVAL, INTERVAL) is legacy
