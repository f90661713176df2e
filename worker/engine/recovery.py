"""Recovery of deliveries the broker lost: the job record, not the queue, is the truth.

Celery on Redis takes a message off its queue (BRPOP) before it records it as unacked; if
Redis stops in that instant, or the worker is killed, the message is gone from both, and
no visibility timeout brings it back. The job record still says the delivery is open, and
keeps its message. ``recover()`` publishes such messages again:

- a page no worker has taken :data:`~worker.engine.jobs.PICKUP_SECONDS` after its
  message fell due (it was queued, or its retry's countdown ran out), and whose message is
  neither on its queue nor in a worker's hands (looked for twice, :data:`TRANSIT_SECONDS`
  apart), was lost: it goes out again at once (a page waiting its turn in a backlog is
  left alone). Its countdown is over, so the copy needs none;
- a page whose message is in the hands of the worker that received it with a countdown
  (a retry's, a deferral's: marked so, worker/presence.py) when that worker has not said
  it is up for :data:`~worker.engine.workers.ALIVE_SECONDS`, or was restarted since, goes
  out again at its pickup look too: that worker died holding it, and only the visibility
  timeout would bring it back. One a live worker holds is looked at again when that
  worker would count as dead if it fell silent then;
- a delivery whose worker began an attempt and died in it (its claim lapsed, and no
  outcome was recorded) goes out again at once: its message is still in the dead worker's
  entry of the broker's unacked hash, where only the visibility timeout (an hour by
  default) would bring it back. A page is looked at just after its claim lapses; email,
  a stall period after its claim (:data:`~worker.engine.jobs.LOOK_AT_CLAIM_LAPSE`);
- any open delivery that has seen no progress for ``JOB_STALL_SECONDS`` goes out again
  whatever the broker seems to hold.

A delivery a worker holds the claim of at the look is left to it, and looked at again once
that claim would have lapsed (an email, a stall period after that: its attempt may outlast
the claim on a live worker).

A copy that turns out not to be needed is harmless, because every delivery checks the
record (delivered? another worker's claim?) first.

What this cannot recover: a ``notify`` intake message lost the same way, before any job
record exists (producers that need that covered use ``tasks.enqueue`` or the HTTP API,
which record the job and queue it in one step). One a dead worker held is put back by
worker/engine/intake_recovery.py.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, cast

from config.queues import QUEUE_OF
from worker.channels import Channel
from worker.engine import keys, stats
from worker.engine.jobs import AFTER_CLAIM_SECONDS, FINAL_STATES, QUEUED, forget_open
from worker.engine.messages import delivery_id
from worker.engine.runtime import Engine
from worker.engine.workers import ALIVE_SECONDS

#: Deliveries looked at per sweep, at most (the rest wait for the next sweep).
BATCH = 500
#: Longer than a worker takes to move a message it popped into kombu's unacked hash.
TRANSIT_SECONDS = 0.5


@dataclass(frozen=True)
class Stalled:
    """One open delivery published again: its message payload, how long it had gone
    without progress beyond any wait it was entitled to (a retry's countdown; for an
    abandoned attempt, since it began), and why: the broker was seen to have lost it
    (``lost``: on no queue, in no worker's hands), its worker died in an attempt
    (``abandoned``), or neither (it stalled)."""

    job_id: str
    channel: str
    payload: dict[str, Any]
    idle_seconds: float
    #: Why, as ``gds_notify_recovered_total`` counts it.
    reason: Literal["lost", "abandoned", "stalled"] = "stalled"
    #: For one lost with a worker that died holding it through a countdown: that worker.
    holder: str | None = None

    @property
    def lost(self) -> bool:
        return self.reason == "lost"

    @property
    def abandoned(self) -> bool:
        return self.reason == "abandoned"


def recover(engine: Engine, now: float | None = None) -> list[Stalled]:
    """Publish again every open delivery past its stall deadline, every page the broker
    lost before a worker took it or whose worker died holding its countdown, and every
    delivery whose worker died in an attempt; push each one's deadline on by one more
    stall period (so one sweep takes it once). Entries whose job is final or gone are
    dropped; a page still waiting on its queue, or its countdown in a live worker's hands,
    is looked at again when it would count as stalled (the latter also when that worker
    would count as dead); one in a worker's claim, once the claim would have lapsed; one a
    worker made progress with meanwhile is left to it. Returns what was published."""
    store, r = engine.jobs, engine.redis
    stall = engine.settings.job_stall_seconds
    # One sweeper at a time across the pool (beat may run twice during a handover). A
    # sweeper killed mid-sweep leaves the lock behind: it lapses after two intervals, not
    # a stall period, which would hold every recovery up for five minutes. A sweep that
    # outlasts it overlaps the next harmlessly (each re-queue is a compare-and-set).
    ttl = max(5.0, min(stall, 2 * engine.settings.job_recovery_interval))
    with engine.locks.held(keys.RECOVERY_LOCK, ttl) as lock:
        if lock is None:
            return []
        now = time.time() if now is None else now
        due = cast(
            "list[tuple[str, float]]",
            r.zrangebyscore(keys.OPEN_DELIVERIES, 0, now, start=0, num=BATCH, withscores=True),
        )
        deliveries = [_delivery(member) for member, _ in due]
        progress = store.progress(deliveries)
        # In no worker's claim and not yet at its first look, its message due later: a
        # copy claimed it early and died, which moved the look. Its countdown (a
        # Retry-After, a rate-limit slot) stands: the look goes back to after it.
        early = {
            i: look
            for i, p in enumerate(progress)
            if p.awaiting
            and now < (look := store.first_look(deliveries[i][1], p.due, abandoned=p.abandoned))
        }
        # In no worker's claim, and due for less than a stall period: waiting its turn on
        # the queue or in a worker's hands, or lost by the broker. The broker says which.
        # (Not one whose worker died in an attempt: the broker holds its message in that
        # worker's hands for good.)
        unseen = {
            i
            for i, p in enumerate(progress)
            if p.awaiting and not p.abandoned and i not in early and now - p.due < stall
        }
        held = _held(engine, [deliveries[i] for i in unseen])
        lost = [i for i in unseen if deliveries[i] not in held]
        lost_now: set[int] = set()
        if lost:
            # kombu moves a message from its queue to the unacked hash in two steps, so one
            # a worker is taking right now is in neither for a moment: look again a little
            # later. And read the progress again: a message taken and worked on since the
            # first read is no longer in the broker, and no longer awaiting (or due later).
            time.sleep(TRANSIT_SECONDS)
            held = _held(engine, [deliveries[i] for i in lost])
            still = store.progress([deliveries[i] for i in lost])
            lost_now = {
                i
                for i, p in zip(lost, still, strict=True)
                if p.awaiting and p.due == progress[i].due and deliveries[i] not in held
            }
        # Held by the broker, with the mark of the worker that received it with a countdown
        # and has not begun it: how long since that worker last said it was up. One silent
        # longer than a live worker ever is, with the message still in a worker's hands,
        # died holding it (only the visibility timeout would bring it back).
        marked = {
            i: by for i in unseen if i not in lost_now and (by := progress[i].held_by) is not None
        }
        silence = dict(zip(marked, engine.workers.silent_for(list(marked.values())), strict=True))
        dead = [i for i in marked if silence[i] > ALIVE_SECONDS]
        taken = _taken(engine, [deliveries[i] for i in dead])
        orphans = [i for i in dead if deliveries[i] in taken]
        # Read again: a worker that took the message meanwhile (put back on its queue by the
        # dead one's warm shutdown, say) has marked it as its own, or claimed it. Each one
        # left, by the name of the worker that died holding it.
        again = store.progress([deliveries[i] for i in orphans]) if orphans else []
        orphaned = {
            i: marked[i][0]
            for i, p in zip(orphans, again, strict=True)
            if p.awaiting and p.held_by == marked[i]
        }
        found: list[Stalled] = []
        for i, ((_, deadline), (job_id, channel), p) in enumerate(
            zip(due, deliveries, progress, strict=True)
        ):
            if p.state is None or p.state in FINAL_STATES:
                forget_open(r, job_id, channel)
                continue
            # Each move below is made only if no worker moved the look since it was read
            # (a claim, a record: progress, whose own moment stands).
            if p.claimed:
                # A worker is at it: it records an outcome before its claim lapses, or died
                # (an email attempt may outlast its claim: it gets a stall period more).
                lapsed = now + p.claim_left + store.after_claim(channel)
                store.reschedule(job_id, channel, deadline, lapsed)
                continue
            if i in early:
                store.reschedule(job_id, channel, deadline, early[i])
                continue
            if i in unseen and i not in lost_now and i not in orphaned:
                # Held by the broker: looked at again when it would count as stalled; and
                # one a live worker holds through a countdown, also when that worker
                # would count as dead if it stopped saying it was up now.
                look = p.due + stall
                if i in silence and silence[i] <= ALIVE_SECONDS:
                    look = min(look, now + ALIVE_SECONDS - silence[i] + AFTER_CLAIM_SECONDS)
                store.reschedule(job_id, channel, deadline, look)
                continue
            state, payload = store.state_and_payload(job_id, channel)
            if state is None or state in FINAL_STATES or payload is None:
                forget_open(r, job_id, channel)
                continue
            if not store.reschedule(job_id, channel, deadline, now + stall):
                continue
            store.republish(job_id, Channel(channel), payload)
            begun = p.taken_at if p.abandoned else None
            reason: Literal["lost", "abandoned", "stalled"] = "stalled"
            holder = orphaned.get(i)
            if holder is not None:
                reason = "lost"
                idle = now - p.due
                gone = (
                    "has restarted or stopped since"
                    if silence[i] == math.inf
                    else f"has not said it is up for {silence[i]:.0f}s"
                )
                outcome = (
                    f"recovered: {state}, its message was in the hands of worker {holder},"
                    f" which {gone} (it died holding it), {idle:.0f}s after it fell due"
                )
            elif i in lost_now:
                reason = "lost"
                idle = now - p.due
                since = "it was queued" if state == QUEUED else "its countdown ran out"
                outcome = (
                    f"recovered: {state}, lost by the broker (on no queue, in no worker's"
                    f" hands) {idle:.0f}s after {since}"
                )
            elif begun is not None:
                reason = "abandoned"
                idle = now - begun
                outcome = (
                    f"recovered: {state}, its worker stopped in an attempt begun {idle:.0f}s"
                    " ago (its claim lapsed, no outcome recorded)"
                )
            else:
                # Since its last progress: its message falling due, or the sweep's last
                # copy of it (its deadline a stall period on).
                idle = now - max(p.due, float(deadline) - stall)
                outcome = f"recovered: {state}, idle {idle:.0f}s"
            store.record(job_id, channel, outcome)
            found.append(Stalled(job_id, channel, payload, idle, reason, holder))
        if found:
            counts = Counter(item.reason for item in found)
            stats.add(r, [stats.count("recovered", k, by=n) for k, n in counts.items()])
        stats.stamp(r, keys.RECOVERY_LAST)
        return found


def _delivery(member: str) -> tuple[str, str]:
    """The job id and channel of an open-delivery member (``job id:channel``)."""
    job_id, _, channel = member.rpartition(":")
    return job_id, channel


def _taken(engine: Engine, deliveries: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``deliveries`` have a message in a worker's hands; none when the broker
    cannot tell (an unacked hash too long to read through)."""
    wanted = {
        delivery_id(job_id, Channel(channel)): (job_id, channel) for job_id, channel in deliveries
    }
    taken = engine.broker.taken(wanted)
    return set() if taken is None else {wanted[t] for t in taken}


def _held(engine: Engine, deliveries: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``deliveries`` the broker holds (on their queue, or in a worker's hands),
    or cannot tell of (a queue too long to read through)."""
    by_queue: dict[str, dict[str, tuple[str, str]]] = {}
    for job_id, channel in deliveries:
        queue = QUEUE_OF[Channel(channel)]
        by_queue.setdefault(queue, {})[delivery_id(job_id, Channel(channel))] = (job_id, channel)
    held: set[tuple[str, str]] = set()
    for queue, wanted in by_queue.items():
        holding = engine.broker.holding(queue, wanted)
        held.update(wanted.values() if holding is None else (wanted[t] for t in holding))
    return held
