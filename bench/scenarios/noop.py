"""The baseline: no-op tasks (``bench/noop_app.py``) through one worker process with the
pool type and concurrency of the Procfile's ``pagerduty`` pool, on the same Redis,
published by as many producer threads as the pipeline's, timed from the first publish to
the queue drained. :mod:`bench.scenarios.throughput` runs it in rounds alternating with
the pipeline's."""

from __future__ import annotations

import redis

from bench.context import Context
from bench.measure import wait_drained
from bench.noop_app import NOOP_QUEUE, NOOP_TASK, app
from bench.procfile import PoolSpec, pool, with_option


def spec() -> PoolSpec:
    """The ``pagerduty`` pool's command line, running the no-op app on its own queue."""
    deployed = pool("pagerduty")
    return with_option(with_option(deployed, "-A", "bench.noop_app"), "-Q", NOOP_QUEUE, "noop")


def _publish(n: int) -> None:
    app.send_task(NOOP_TASK, args=[n], queue=NOOP_QUEUE, routing_key=NOOP_QUEUE)


def warm_up(ctx: Context, client: redis.Redis) -> None:
    """Connections, imports, the first prefetch: not part of any figure."""
    ctx.produce(range(ctx.sizes.warmup), _publish)
    wait_drained(client, [NOOP_QUEUE], timeout=60)


def one_round(ctx: Context, client: redis.Redis, count: int) -> tuple[float, float]:
    """Run ``count`` no-op tasks; returns (seconds to drain, seconds to publish)."""
    started, published = ctx.produce(range(count), _publish)
    finished = wait_drained(client, [NOOP_QUEUE], timeout=max(120.0, count / 20))
    return finished - started, published - started
