"""``celery_noop_per_s``: the baseline. No-op tasks per second through one worker process
with the pool type and concurrency of the Procfile's ``pagerduty`` pool, on the same Redis,
from first publish to the queue drained, published by as many producer threads as the
pipeline's."""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.measure import wait_drained
from bench.noop_app import NOOP_QUEUE, NOOP_TASK, app
from bench.procfile import pool, with_option

NAME = "noop"


def _publish(n: int) -> None:
    app.send_task(NOOP_TASK, args=[n], queue=NOOP_QUEUE, routing_key=NOOP_QUEUE)


def run(ctx: Context) -> dict[str, Any]:
    deployed = pool("pagerduty")
    spec = with_option(with_option(deployed, "-A", "bench.noop_app"), "-Q", NOOP_QUEUE, "noop")
    ctx.stack.pools([("noop", spec)])
    client = ctx.stack.redis()
    try:
        ctx.produce(range(ctx.sizes.warmup), _publish)  # connections, the first prefetch
        wait_drained(client, [NOOP_QUEUE], timeout=60)
        count = ctx.sizes.noop_tasks
        started, published = ctx.produce(range(count), _publish)
        finished = wait_drained(client, [NOOP_QUEUE], timeout=max(120.0, count / 20))
    finally:
        client.close()
        ctx.stack.stop_pools()
    rate = count / (finished - started)
    ctx.log(f"  no-op tasks: {count} in {finished - started:.2f} s = {rate:.0f}/s")
    return {
        "celery_noop_per_s": round(rate, 1),
        "details": {
            "tasks": count,
            "seconds": round(finished - started, 3),
            "publish_per_s": round(count / (published - started), 1),
            "pool": spec.pool,
            "concurrency": spec.concurrency,
        },
    }
