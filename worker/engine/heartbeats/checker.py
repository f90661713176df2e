"""The heartbeat checker: evaluate every service, commit each state change atomically,
then send what the changes call for.

Safe with several schedulers and workers: an evaluation runs under a Redis lock (a second
checker that finds it held skips its turn), and each state change is a compare-and-set on
the state the evaluation read, so even two evaluations that overlap (a lock that expired
under a stalled checker) commit each transition, and so each page, once.

The checker never talks to PagerDuty: it hands each action to a *sender* (tasks/ passes
one that enqueues through the normal delivery queue).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import redis

from config.catalogue import Catalogue
from worker.engine import keys, scripts
from worker.engine.heartbeats.evaluation import (
    Action,
    Observation,
    ReportedFailure,
    ServiceState,
    removed,
    starts_hold,
    step,
)
from worker.engine.heartbeats.store import HeartbeatStore, read_failures, read_last
from worker.engine.lock import Locks

logger = logging.getLogger(__name__)

#: Sends one action through the queue; returns the job id.
Sender = Callable[[Action], str]


@dataclass
class Plan:
    """One evaluation: the states read and the states to write, by slug."""

    now: float
    read: dict[str, str | None]
    write: dict[str, ServiceState]
    #: Services no longer listed with nothing left to send: their states are deleted.
    forget: list[str] = field(default_factory=list)
    #: The reported failure each written state took in (its id): deleted with the write.
    taken: dict[str, str] = field(default_factory=dict)
    #: Whether it held silence for an outage of the checker.
    held: bool = False
    #: How many services are in each state after it (for /metrics).
    states: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckReport:
    skipped: bool = False
    services: int = 0
    changed: int = 0
    conflicts: int = 0
    sent: list[Action] = field(default_factory=list)
    send_errors: int = 0
    seconds: float = 0.0


class HeartbeatChecker:
    def __init__(
        self, client: redis.Redis, store: HeartbeatStore, locks: Locks, check_interval: float
    ) -> None:
        self.redis = client
        self.store = store
        self.locks = locks
        self.check_interval = check_interval
        self._cas = scripts.register(client, __file__, "checker_compare_and_set")

    def run(self, catalogue: Catalogue, send: Sender, complete: bool = True) -> CheckReport:
        """One guarded evaluation of every service; skipped if another is running.
        ``complete``: the catalogue lists every service there is, so a state it does not
        list is a removed service's (False when this process has no services file, and so
        knows only the services registered at run time)."""
        started = time.perf_counter()
        ttl = min(max(5.0, 2 * self.check_interval), 120.0)
        with self.locks.held(keys.HEARTBEAT_CHECK_LOCK, ttl) as lock:
            if lock is None:
                logger.debug("heartbeat check skipped: another checker is running")
                return CheckReport(skipped=True)
            plan = self.plan(catalogue, complete)
            report = self.commit(plan, send)
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(keys.HEARTBEAT_LAST_CHECK, repr(plan.now))
            if plan.held:
                pipe.set(keys.HEARTBEAT_HELD_AT, repr(plan.now))
            pipe.set(keys.HEARTBEAT_SUMMARY, json.dumps(plan.states))
            pipe.execute()
        report.services = len(catalogue.services)
        report.seconds = time.perf_counter() - started
        return report

    def plan(self, catalogue: Catalogue, complete: bool = True) -> Plan:
        """Read everything a check needs in a few round trips and evaluate every service
        (and, with a ``complete`` catalogue, every removed service's state)."""
        now = self.store.now()
        raw_last_check, raw_held = self.redis.mget(
            keys.HEARTBEAT_LAST_CHECK, keys.HEARTBEAT_HELD_AT
        )
        gap = None if raw_last_check is None else now - float(raw_last_check)
        since_held = None if raw_held is None else now - float(raw_held)
        specs = list(catalogue.services.values())
        counts = self.store.counts(specs, now)
        running = self.store.running_since(specs)
        # One snapshot (MULTI) of the newest reports, the failures not yet taken in and the
        # states: a check that took a failure in deleted it in the same step as it wrote
        # the state, so no check sees the failure beside a state that has dealt with it
        # (read apart, a check could page again a failure already paged and resolved).
        snapshot = self.redis.pipeline(transaction=True)
        snapshot.hgetall(keys.HEARTBEAT_LAST)
        snapshot.hgetall(keys.HEARTBEAT_FAILED)
        snapshot.hgetall(keys.HEARTBEAT_STATE)
        raw_lasts, raw_failures, raw_states = snapshot.execute()
        lasts = read_last(raw_lasts)
        failures = read_failures(raw_failures)
        states = cast(dict[str, str], raw_states)
        at = datetime.fromtimestamp(now, UTC)
        read: dict[str, str | None] = {}
        write: dict[str, ServiceState] = {}
        taken: dict[str, str] = {}
        tally: Counter[str] = Counter()
        for spec in specs:
            raw = states.get(spec.slug)
            old = ServiceState.model_validate_json(raw) if raw else None
            last = lasts.get(spec.slug)
            window_end = spec.maintenance_until(at) if spec.maintenance else None
            failure = failures.get(spec.slug)
            obs = Observation(
                count=counts[spec.slug],
                last_at=last.at if last else None,
                last_status=last.status if last else None,
                maintenance_until=window_end.timestamp() if window_end else None,
                running_since=running.get(spec.slug),
                reported=None if failure is None or not news(failure, old) else failure,
            )
            new = step(spec, old, obs, now, gap, self.check_interval, since_held)
            tally[new.status] += 1
            # A failure seen is taken in by this write, even one that changed nothing (the
            # service already down, or inactive), or that is no news: left, the next check
            # would see it again.
            if old is None or new != old or new.outbox or failure is not None:
                read[spec.slug] = raw
                write[spec.slug] = new
                if failure is not None:
                    taken[spec.slug] = failure.id
        forget: list[str] = []
        for slug in sorted(states.keys() - catalogue.services.keys() if complete else ()):
            old = ServiceState.model_validate_json(states[slug])
            left = removed(old, now, self.check_interval)
            if left is None:
                forget.append(slug)
                read[slug] = states[slug]
            elif left != old:
                read[slug] = states[slug]
                write[slug] = left
        # Only a long gap counts: the hold of a first check (or one after Redis lost its
        # data) is no sign of a checker that is late.
        held = gap is not None and any(
            starts_hold(s, gap, since_held, self.check_interval) for s in specs
        )
        return Plan(
            now=now,
            read=read,
            write=write,
            forget=forget,
            taken=taken,
            held=held,
            states=dict(tally),
        )

    def commit(self, plan: Plan, send: Sender) -> CheckReport:
        """Write each changed state if nobody changed it since it was read (and delete the
        reported failure it took in, or everything kept of a service it forgets, in the
        same step), then send the outbox of each state this checker wrote and clear what
        was sent."""
        report = CheckReport()
        slugs = [*plan.write, *plan.forget]
        pipe = self.redis.pipeline(transaction=False)
        for slug in slugs:
            new = plan.write[slug].dump() if slug in plan.write else ""  # "": delete it
            self._compare_and_set(slug, plan.read[slug] or "", new, plan.taken.get(slug), pipe)
        won = pipe.execute() if slugs else []
        for slug, ok in zip(slugs, won, strict=True):
            if not int(ok):
                report.conflicts += 1
                logger.info("heartbeat %s: state changed by another checker; left to it", slug)
                continue
            report.changed += 1
            if slug not in plan.write:
                # Its last report and unfinished runs went with it (the same script):
                # added back, it starts new, not down for a /fail or a /start from before
                # it was removed.
                logger.info("heartbeat %s: removed from the catalogue; state forgotten", slug)
                continue
            state = plan.write[slug]
            if state.outbox:
                self._drain(slug, state, send, report)
        return report

    def _drain(self, slug: str, state: ServiceState, send: Sender, report: CheckReport) -> None:
        written = state.dump()
        remaining = list(state.outbox)
        while remaining:
            action = remaining[0]
            try:
                job_id = send(action)
            except Exception as exc:  # whatever failed, the action stays in the outbox
                report.send_errors += 1
                logger.warning(
                    "heartbeat %s: %s not sent yet (%s); retried next check",
                    slug,
                    action.kind,
                    type(exc).__name__,
                )
                break
            remaining.pop(0)
            report.sent.append(action)
            if (
                action.kind == "trigger"
                and state.incident is not None
                and state.incident.dedup_key == action.dedup_key
            ):
                state.incident.job_id = job_id
            logger.info("heartbeat %s: %s queued as job %s", slug, action.kind, job_id)
        state.outbox = remaining
        self._compare_and_set(slug, written, state.dump())

    def _compare_and_set(
        self,
        slug: str,
        read: str,
        new: str,
        taken: str | None = None,
        client: redis.Redis | redis.client.Pipeline | None = None,
    ) -> None:
        """Queue (on a pipeline ``client``) or run checker_compare_and_set.lua: ``new``
        ("" forgets the service) if the state is still ``read``; ``taken``, the id of the
        reported failure the new state took in, deleted with it."""
        self._cas(
            keys=[
                keys.HEARTBEAT_STATE,
                keys.HEARTBEAT_FAILED,
                keys.HEARTBEAT_LAST,
                keys.heartbeat_runs(slug),
            ],
            args=[slug, read, new, taken or ""],
            client=client,
        )


def news(failure: ReportedFailure, state: ServiceState | None) -> bool:
    """Whether a failure no check has taken in is still to be paged: not when an incident
    was opened after it (a checker of an earlier version, during a rolling upgrade, paged
    it and left it kept). One reported late (a Celery producer's ``at`` behind a backlog)
    is news: it pages once, saying when it was."""
    return state is None or not state.opened or failure.at > max(state.opened)


def read_states(client: redis.Redis) -> dict[str, ServiceState]:
    """Every service's current state, by slug."""
    return {
        slug: ServiceState.model_validate_json(raw)
        for slug, raw in cast(dict[str, str], client.hgetall(keys.HEARTBEAT_STATE)).items()
    }


def last_check(client: redis.Redis) -> float | None:
    """When the last check over a catalogue finished (Redis time), or None."""
    raw = client.get(keys.HEARTBEAT_LAST_CHECK)
    return None if raw is None else float(raw)


def last_idle_check(client: redis.Redis) -> float | None:
    """When a check last ran and found no catalogue (the worker's
    ``HEARTBEAT_SERVICES_FILE`` unset, nothing registered), or None."""
    raw = client.get(keys.HEARTBEAT_CHECK_IDLE)
    return None if raw is None else float(raw)
