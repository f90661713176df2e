"""Recovery of deliveries the broker lost: the job record, not the queue, is the truth.

Celery on Redis takes a message off its queue (BRPOP) before it records it as unacked; if
Redis stops in that instant the message is gone from both, and no visibility timeout
brings it back. The job record still says the delivery is open, and keeps its message.
``recover()`` finds open deliveries that have seen no progress for ``JOB_STALL_SECONDS``
and pushes their messages onto their queues again; a copy that turns out not to be needed
is harmless, because every delivery checks the record (delivered? another worker's
claim?) first.

What this cannot recover: a ``notify`` intake message lost the same way, before any job
record exists (producers that need that covered use ``tasks.enqueue`` or the HTTP API,
which record the job and queue it in one step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from worker.channels import Channel
from worker.engine import keys, stats
from worker.engine.jobs import FINAL_STATES
from worker.engine.runtime import Engine

#: Deliveries re-queued per sweep, at most (the rest wait for the next sweep).
BATCH = 500


@dataclass(frozen=True)
class Stalled:
    """One open delivery published again: its message payload, and how long it had gone
    without progress beyond any wait it was entitled to (a retry's countdown)."""

    job_id: str
    channel: str
    payload: dict[str, Any]
    idle_seconds: float


def recover(engine: Engine, now: float | None = None) -> list[Stalled]:
    """Publish again every open delivery past its stall deadline, and push the deadline on
    by one more stall period (so one sweep takes it once). Entries whose job is final or
    gone are dropped. Returns what was published."""
    store, r = engine.jobs, engine.redis
    stall = engine.settings.job_stall_seconds
    # One sweeper at a time across the pool (beat may run twice during a handover).
    with engine.locks.held(keys.RECOVERY_LOCK, max(5.0, stall)) as lock:
        if lock is None:
            return []
        now = time.time() if now is None else now
        due = cast(
            "list[tuple[str, float]]",
            r.zrangebyscore(keys.OPEN_DELIVERIES, 0, now, start=0, num=BATCH, withscores=True),
        )
        found: list[Stalled] = []
        for member, deadline in due:
            job_id, _, channel = member.rpartition(":")
            state, payload = store.state_and_payload(job_id, channel)
            if state is None or state in FINAL_STATES or payload is None:
                r.zrem(keys.OPEN_DELIVERIES, member)
                continue
            r.zadd(keys.OPEN_DELIVERIES, {member: now + stall}, xx=True)
            store.republish(job_id, Channel(channel), payload)
            idle = now - (float(deadline) - stall)
            store.record(job_id, channel, f"recovered: {state}, idle {idle:.0f}s")
            found.append(Stalled(job_id, channel, payload, idle))
        if found:
            stats.add(r, [stats.count("recovered", by=len(found))])
        stats.stamp(r, keys.RECOVERY_LAST)
        return found
