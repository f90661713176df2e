"""The pipeline's throughput: pages end to end. The harness is a Python producer:
``tasks.enqueue`` validates, claims the idempotency id, routes and records each job; the
Procfile's ``pagerduty`` pool delivers it through the shared rate limiter (set far above
the load) to the sandbox. Timed from the first enqueue to the sandbox's receipt of the
last page, with ``producer_threads`` producers at once. :mod:`bench.scenarios.throughput`
runs it in rounds alternating with the baseline's."""

from __future__ import annotations

import tasks
from bench.context import Context, delivered_at
from worker.notification import Notification, NotificationPriority


def page(key: str, n: int) -> Notification:
    """A page as a monitoring system would send it (idempotency id = dedup key)."""
    return Notification(
        recipient="db-bench-01",
        subject=f"Replication lag on db-bench-01 ({n})",
        body="Seconds behind primary: 412. Threshold: 300.",
        priority=NotificationPriority.CRITICAL,
        alert_name="ReplicationLag",
        db_instance_id=n,
        idempotency_id=key,
        metadata={"team": "dba", "region": "eu-west-2"},
    )


def warm_up(ctx: Context) -> None:
    """Connections and imports in the pool and the harness: not part of any figure."""
    warm = ctx.ids("pipeline-warmup", ctx.sizes.warmup)
    base = ctx.fresh_sandbox()
    for i, key in enumerate(warm):
        tasks.enqueue(page(key, i))
    ctx.wait_for_events(base, len(warm), timeout=60)


def one_round(ctx: Context, count: int, label: str) -> tuple[float, float, int]:
    """Deliver ``count`` pages; returns (seconds end to end, seconds to enqueue, requests
    the sandbox answered other than 202)."""
    keys = ctx.ids(f"pipeline-{label}", count)
    pages = [page(key, i) for i, key in enumerate(keys)]  # the producers' data, made first
    base = ctx.fresh_sandbox()
    started, enqueued = ctx.produce(pages, tasks.enqueue)
    ctx.wait_for_events(base, count, timeout=max(120.0, count / 10))
    events = ctx.sandbox.events()
    finished = max(delivered_at(events, set(keys)).values())
    return finished - started, enqueued - started, sum(e.get("status") != 202 for e in events)
