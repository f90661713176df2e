"""``pipeline_per_s``: pages per second end to end. The harness is a Python producer:
``tasks.enqueue`` validates, claims the idempotency id, routes and records each job; the
Procfile's ``pagerduty`` pool delivers it through the shared rate limiter (set far above
the load) to the sandbox. Timed from the first enqueue to the sandbox's receipt of the
last page, with ``producer_threads`` producers at once. Also ``worker_rss_mb``: the pool's
resident memory right after."""

from __future__ import annotations

from typing import Any

import tasks
from bench.context import Context, delivered_at
from bench.measure import rss_mb
from worker.providers.base import Notification, NotificationPriority


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


NAME = "pipeline"


def run(ctx: Context) -> dict[str, Any]:
    pools = ctx.deployed_pools()
    warm = ctx.ids("pipeline-warmup", ctx.sizes.warmup)
    base = ctx.fresh_sandbox()
    for i, key in enumerate(warm):
        tasks.enqueue(page(key, i))
    ctx.wait_for_events(base, len(warm), timeout=60)

    count = ctx.sizes.pipeline_notifications
    keys = ctx.ids("pipeline", count)
    pages = [page(key, i) for i, key in enumerate(keys)]  # the producer's data, made first
    base = ctx.fresh_sandbox()
    started, enqueued = ctx.produce(pages, tasks.enqueue)
    ctx.wait_for_events(base, count, timeout=max(120.0, count / 10))
    events = ctx.sandbox.events()
    finished = max(delivered_at(events, set(keys)).values())
    rss = rss_mb(_pid(pools[0]))

    rate = count / (finished - started)
    ctx.log(f"  pipeline: {count} pages in {finished - started:.2f} s = {rate:.0f}/s")
    noop = ctx.results.get("celery_noop_per_s")
    return {
        "pipeline_per_s": round(rate, 1),
        "pipeline_vs_noop": round(rate / noop, 3) if isinstance(noop, float) else None,
        "worker_rss_mb": round(rss, 1),
        "details": {
            "pages": count,
            "seconds": round(finished - started, 3),
            "enqueue_per_s": round(count / (enqueued - started), 1),
            "sandbox_requests": len(events),
            "non_202": sum(1 for e in events if e.get("status") != 202),
            "rss_of": "the pagerduty pool's worker process",
        },
    }


def _pid(service: Any) -> int:
    assert service.proc is not None
    return int(service.proc.pid)
