"""One service, one check: the state machine, as a pure function.

    new ──(first full window over)──> up / failing
    up ──bad──> failing ──(failures_before_page bad checks)──> down: trigger
    down ──(successes_before_resolve good checks)──> up: resolve

A check is *bad* when fewer than ``threshold`` heartbeats arrived within ``window +
grace``, when the newest heartbeat says ``fail``, when the service reported a failure no
check has taken in yet (even if it reported success since: that failure still pages, once,
and the next good check resolves it), or when a run that started has not finished within
``max_duration``. Rules that shape the pages:

- **Hold.** No trigger for silence before ``hold_until``: a service first seen, or every
  service after the checker itself stopped for longer than a window (start-up, a monitor
  outage, a Redis restart), first gets one full window to report. A monitor outage never
  pages every team at once. A long gap that begins within ``HOLD_AGAIN_AFTER_SECONDS``
  of the last hold holds nothing: checks that stay late (most of them expiring behind a backed-up
  queue) are the checker's pace, and a hold at each would never page silence. A failure
  the service reported itself (``fail``, or a run that is too long) is news, not silence:
  it pages during a hold too.
- **Maintenance and mute.** A window, or a muted service, stops triggers; the service is
  ``down`` but *suppressed*. Resolves always go out. A service still down when its window
  ends (or it is unmuted) is paged then.
- **Inactive.** A deactivated service is not watched; an incident it had is resolved.
- **Removed.** A service missing from the catalogue at every check for
  ``REMOVED_AFTER_CHECKS`` check intervals is treated as deactivated (its incident
  resolved, a trigger not yet sent dropped), then forgotten: added again, it starts new.
  Kept, its old incident made its next outage look paged already. Not at once: a file
  caught half written, or one host's file behind the others', must not resolve incidents
  that are still open (a check that lists the service again clears the count).
- **Storm guard.** At most ``storm_incidents`` incidents are opened per ``storm_period``;
  while at that limit a recovering service keeps its incident open instead of resolving
  (and re-opening it at the next flap).

The actions a step decides on go into the state's *outbox* and are sent by the checker
after the state is committed, then cleared; a crash between the two sends them again on
the next check (triggers carry an idempotency id, resolves are idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from config.catalogue import CatalogueEntry, ServiceSpec

Status = Literal["new", "up", "failing", "down", "inactive"]

#: Priority on the catalogue -> Notification priority; severities follow from it
#: (P1 critical, P2 error, P3 warning, P4 and P5 info).
NOTIFICATION_PRIORITY = {
    "P1": "critical",
    "P2": "high",
    "P3": "normal",
    "P4": "low",
    "P5": "low",
}
SEVERITY = {"P1": "critical", "P2": "error", "P3": "warning", "P4": "info", "P5": "info"}


class Incident(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dedup_key: str
    idempotency_id: str
    opened_at: float
    job_id: str | None = None


class Action(BaseModel):
    """A page to send: a trigger (with its whole job request) or a resolve."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["trigger", "resolve"]
    dedup_key: str
    team: str
    request: dict[str, Any] | None = None


class ServiceState(BaseModel):
    """What the checker remembers about one service (JSON in ``gds:hb:state``)."""

    model_config = ConfigDict(extra="ignore")

    status: Status = "new"
    since: float
    hold_until: float = 0.0
    fail_streak: int = 0
    ok_streak: int = 0
    suppressed: bool = False
    reason: str | None = None
    incident: Incident | None = None
    #: The team whose routing key the open incident paged: its resolve goes there, whatever
    #: team the service names by then. Kept here, not in Incident, whose readers in older
    #: versions refuse a field they do not know (a rolling upgrade, a rollback); None in a
    #: state written before it was kept, or by such a version.
    incident_team: str | None = None
    opened: list[float] = Field(default_factory=list)
    outbox: list[Action] = Field(default_factory=list)
    #: When a check first found the service missing from its catalogue (None: listed).
    missing_since: float | None = None
    #: When the service was last made active again: a failure it reported before then is
    #: not its state now. (A service forgotten and added back has its last report cleared
    #: with its state: checker.py.)
    fresh_since: float | None = None

    def dump(self) -> str:
        return self.model_dump_json()

    def resolve_incident(self, paging_team: str) -> None:
        """Queue the open incident's resolve, for the team it paged (``paging_team``, the
        service's team now, for an incident opened before that was kept), and close it."""
        if self.incident is None:
            return
        team = self.incident_team if self.incident_team is not None else paging_team
        self.outbox.append(Action(kind="resolve", dedup_key=self.incident.dedup_key, team=team))
        self.incident = self.incident_team = None


@dataclass(frozen=True)
class ReportedFailure:
    """The newest failure a service reported that no check has taken in yet: when, how it
    came (``/fail``, ``exit 3``, Medic's ``DOWN``; None when the sender did not say) and the
    start of what it said (what a page may quote). ``id`` tells it from a later one."""

    id: str
    at: float
    via: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class Observation:
    """What the check saw for one service."""

    count: int
    last_at: float | None
    last_status: str | None
    maintenance_until: float | None
    running_since: float | None = None  # the oldest run started and not finished
    #: A failure reported since the last check took one in: it pages even when a success
    #: followed it (then ``last_status`` is "up").
    reported: ReportedFailure | None = None

    def recovered_at(self) -> float | None:
        """When the service reported success after the failure in ``reported`` (None: it
        has not, or there is no such failure)."""
        if self.reported is None or self.last_status != "up" or self.last_at is None:
            return None
        return self.last_at if self.last_at >= self.reported.at else None


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


#: The reason a service that said it failed is down.
REPORTED_FAIL = "the service reported status fail"
#: How much of a failing job's output a page quotes: enough to act on, the rest in
#: `gds-notify heartbeats --log`.
REPORT_LINES = 20
REPORT_CHARS = 2_000


def quoted(output: str) -> str:
    """The start of a failing job's output, as a page quotes it."""
    return "\n".join(output.splitlines()[:REPORT_LINES])[:REPORT_CHARS]


def unseen_failure(obs: Observation, fresh_since: float | None) -> ReportedFailure | None:
    """The failure the service reported that no check has taken in yet, unless it came
    before ``fresh_since`` (the service made active again since)."""
    report = obs.reported
    if report is None or (fresh_since is not None and report.at < fresh_since):
        return None
    return report


def is_bad(
    spec: ServiceSpec, obs: Observation, now: float, fresh_since: float | None = None
) -> tuple[str | None, bool]:
    """Why this check fails (None when the service is healthy), and whether the service
    said so itself (a reported failure, not a silence). A failure reported before
    ``fresh_since`` (when the service was made active again) no longer counts, nor does a
    run started before then."""
    stale = fresh_since is not None and obs.last_at is not None and obs.last_at < fresh_since
    if (obs.last_status == "fail" and not stale) or unseen_failure(obs, fresh_since):
        return REPORTED_FAIL, True
    if (
        spec.max_duration is not None
        and obs.running_since is not None
        and (fresh_since is None or obs.running_since >= fresh_since)
        and now - obs.running_since > spec.max_duration
    ):
        return (
            f"ran too long: started at {iso(obs.running_since)}, not finished within "
            f"max_duration {spec.max_duration:g} s"
        ), True
    if obs.count < spec.threshold:
        return (
            f"{obs.count} of {spec.threshold} heartbeats within {spec.window:g} s "
            f"(+{spec.grace:g} s grace)"
        ), False
    return None, False


def outage_after(spec: ServiceSpec, check_interval: float) -> float:
    """A gap between checks longer than this means the checker itself was down."""
    return max(spec.window, 2 * check_interval + 1)


#: After a hold for an outage, a long gap holds again only this long after it (or the
#: service's span, when longer).
HOLD_AGAIN_AFTER_SECONDS = 600.0


def starts_hold(
    spec: ServiceSpec, gap: float | None, since_held: float | None, check_interval: float
) -> bool:
    """Whether this check holds silence for an outage of the checker: no check before it
    (Redis lost its data, or the first check ever), or a gap longer than a window, unless
    the gap began less than ``HOLD_AGAIN_AFTER_SECONDS`` (or the span) after a check held
    silence (``since_held`` is counted to now). From the gap's start, not from now: each
    gap of a checker slow by ten minutes or more would otherwise hold again."""
    if gap is None:
        return True
    if gap <= outage_after(spec, check_interval):
        return False
    if since_held is None:
        return True
    return since_held - gap >= max(HOLD_AGAIN_AFTER_SECONDS, spec.span)


def step(
    spec: ServiceSpec,
    state: ServiceState | None,
    obs: Observation,
    now: float,
    checker_gap: float | None,
    check_interval: float,
    since_held: float | None = None,
) -> ServiceState:
    """The service's state after this check; new actions are appended to its outbox.
    ``checker_gap`` is the time since the last check, ``since_held`` since a check last
    held silence for an outage (None: not known)."""
    s = (
        state.model_copy(deep=True)
        if state
        else ServiceState(since=now, hold_until=now + spec.span)
    )
    if starts_hold(spec, checker_gap, since_held, check_interval):
        s.hold_until = max(s.hold_until, now + spec.span)
    s.opened = [t for t in s.opened if t > now - spec.flap.storm_period]
    s.missing_since = None

    if not spec.active:
        s.resolve_incident(spec.paging_team)
        s.fail_streak = s.ok_streak = 0
        s.suppressed, s.reason = False, "inactive: not watched"
        _move(s, "inactive", now)
        return s
    if s.status == "inactive":  # active again: a fresh start, with a full window to report
        s.hold_until = max(s.hold_until, now + spec.span)
        s.fresh_since = now
        _move(s, "new", now)

    reason, reported = is_bad(spec, obs, now, s.fresh_since)
    if reason is None:
        s.fail_streak = 0
        s.ok_streak = min(s.ok_streak + 1, spec.flap.successes_before_resolve)
        s.reason = None
        if s.incident is not None:
            storm = len(s.opened) >= spec.flap.storm_incidents
            if s.ok_streak >= spec.flap.successes_before_resolve and not storm:
                s.resolve_incident(spec.paging_team)
                _move(s, "up", now)
            elif storm:
                s.reason = "recovering; resolve held back: incident storm guard"
        else:
            s.suppressed = False
            _move(s, "up", now)
        return s

    s.ok_streak = 0
    s.fail_streak = min(s.fail_streak + 1, spec.flap.failures_before_page)
    s.reason = reason
    if s.incident is not None:
        return s  # already paged: further misses add nothing
    if now < s.hold_until and not reported:
        if s.status != "new":
            _move(s, "failing", now)
        return s
    if s.fail_streak < spec.flap.failures_before_page and not reported:
        # Consecutive checks guard against a blip of silence; a service that says it
        # failed is not a blip.
        _move(s, "failing", now)
        return s
    _move(s, "down", now)
    if obs.maintenance_until is not None and now < obs.maintenance_until:
        s.suppressed = True
        s.reason = f"{reason}; in maintenance until {iso(obs.maintenance_until)}"
        return s
    if spec.muted:
        s.suppressed = True
        s.reason = f"{reason}; muted"
        return s
    s.suppressed = False
    opened_ms = int(now * 1000)
    s.incident = Incident(
        dedup_key=spec.dedup_key,
        idempotency_id=f"{spec.dedup_key}@{opened_ms}",
        opened_at=now,
    )
    s.incident_team = spec.paging_team
    s.opened.append(now)
    report = unseen_failure(obs, s.fresh_since) if reason == REPORTED_FAIL else None
    recovered = obs.recovered_at() if report is not None else None
    if report is not None and recovered is not None:
        # Paged all the same (the promise is a page for every reported failure); the
        # incident stays open until a good check resolves it, the next one in general.
        s.reason = f"{reason} at {iso(report.at)}; success reported since, at {iso(recovered)}"
    s.outbox.append(
        Action(
            kind="trigger",
            dedup_key=spec.dedup_key,
            team=spec.paging_team,
            request=trigger_request(spec, obs, reason, s.incident.idempotency_id, report),
        )
    )
    return s


#: Why a removed service's last state is inactive.
REMOVED = "removed from the catalogue: not watched"
#: How many check intervals a service must be missing from every check before it counts
#: as removed.
REMOVED_AFTER_CHECKS = 20


def removed(state: ServiceState, now: float, check_interval: float) -> ServiceState | None:
    """The state of a service the catalogue does not list: first noted as missing; once
    it has been missing for ``REMOVED_AFTER_CHECKS`` intervals, its incident resolved and
    a trigger not yet sent dropped, then (once nothing is left to send) None, to forget
    it. A state whose incident's team is unknown (written by a version that did not keep
    it) is left as it is: there is no routing key to resolve it with."""
    if state.incident is not None and state.incident_team is None:
        return state
    if state.missing_since is None:
        return state.model_copy(update={"missing_since": now})
    if now - state.missing_since < REMOVED_AFTER_CHECKS * check_interval:
        return state
    s = state.model_copy(deep=True)
    s.outbox = [a for a in s.outbox if a.kind == "resolve"]
    if s.incident_team is not None:
        s.resolve_incident(s.incident_team)
    if not s.outbox:
        return None
    s.fail_streak = s.ok_streak = 0
    s.suppressed, s.reason = False, REMOVED
    _move(s, "inactive", now)
    return s


def _move(s: ServiceState, status: Status, now: float) -> None:
    if s.status != status:
        s.status = status
        s.since = now


def trigger_request(
    spec: ServiceSpec,
    obs: Observation,
    reason: str,
    idempotency_id: str,
    report: ReportedFailure | None = None,
) -> dict[str, Any]:
    """The intake job for a heartbeat failure, in the exact PagerDuty format operators rely
    on (summary, severity, source ``medic``, component, group, class, dedup_key, details,
    runbook link). Forced onto the PagerDuty channel whatever the priority. With the
    failure the service ``report``-ed: when, how and (``page_output``) what it said, and
    when it reported success since, if it did."""
    last_seen = iso(obs.last_at)
    missed = 0 if reason == REPORTED_FAIL else max(spec.threshold - obs.count, 1)
    details: dict[str, Any] = {
        "slug": spec.slug,
        "team": spec.team,
        "priority": spec.priority,
        "missed_heartbeats": missed,
        "heartbeats_in_window": obs.count,
        "last_seen": last_seen,
        "window_seconds": spec.window,
        "threshold": spec.threshold,
        "grace_seconds": spec.grace,
        "runbook_url": spec.runbook_url,
        "reason": reason,
    }
    body = (
        f"{spec.name} ({spec.slug}) has missed its heartbeat: {reason}. "
        f"Last seen: {last_seen or 'never'}. Runbook: {spec.runbook_url or 'none given'}"
    )
    if report is not None:
        details["reported_at"] = iso(report.at)
        details["reported_via"] = report.via or "fail"
        if isinstance(spec, CatalogueEntry) and spec.page_output and report.body:
            details["reported_output"] = report.body  # quoted as it was kept (store.py)
        recovered = obs.recovered_at()
        if recovered is not None:
            details["recovered_at"] = iso(recovered)
            body = (
                f"{spec.name} ({spec.slug}) reported a failure at {iso(report.at)} and has "
                f"reported success since, at {iso(recovered)}: the incident resolves when "
                f"a check finds it healthy. Runbook: {spec.runbook_url or 'none given'}"
            )
    metadata: dict[str, Any] = {
        "source": "medic",
        "component": spec.name,
        "group": spec.team,
        "class": "heartbeat_failure",
        "severity": SEVERITY[spec.priority],
        "dedup_key": spec.dedup_key,
        "custom_details": details,
    }
    if spec.runbook_url:
        metadata["links"] = [{"href": spec.runbook_url, "text": f"Runbook: {spec.name}"}]
    return {
        "recipient": spec.name,
        "subject": f"Heartbeat failure: {spec.name}",
        "body": body,
        "priority": NOTIFICATION_PRIORITY[spec.priority],
        "alert_name": "heartbeat_failure",
        "idempotency_id": idempotency_id,
        "team": spec.paging_team,
        "channel": "pagerduty",
        "metadata": metadata,
    }
