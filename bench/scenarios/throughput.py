"""``celery_noop_per_s``, ``pipeline_per_s``, ``pipeline_vs_noop`` and ``worker_rss_mb``.

The baseline's worker and the Procfile's pools run side by side (an idle worker costs
nothing), and ``throughput_rounds`` rounds alternate: no-op tasks, then pages. Each rate
is its total count over its total time, so both see the same background load of a shared
machine; measured one after the other, a neighbour's test run could decide the ratio.
``worker_rss_mb`` is the ``pagerduty`` pool's resident memory after the last round.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.measure import rss_mb
from bench.procfile import pool
from bench.scenarios import noop, pipeline

NAME = "throughput"


def run(ctx: Context) -> dict[str, Any]:
    noop_spec = noop.spec()
    workers = ctx.stack.pools(
        [("noop", noop_spec), ("pagerduty", pool("pagerduty")), ("email", pool("email"))]
    )
    pagerduty_pid = workers[1].proc.pid if workers[1].proc is not None else 0
    client = ctx.stack.redis()
    rounds = ctx.sizes.throughput_rounds
    noop_each = max(1, ctx.sizes.noop_tasks // rounds)
    pages_each = max(1, ctx.sizes.pipeline_notifications // rounds)
    noop_s = noop_pub_s = pipe_s = pipe_enq_s = 0.0
    non_202 = 0
    rates: list[tuple[float, float]] = []
    try:
        noop.warm_up(ctx, client)
        pipeline.warm_up(ctx)
        for r in range(rounds):
            seconds, published = noop.one_round(ctx, client, noop_each)
            noop_s, noop_pub_s = noop_s + seconds, noop_pub_s + published
            delivered, enqueued, odd = pipeline.one_round(ctx, pages_each, str(r))
            pipe_s, pipe_enq_s, non_202 = pipe_s + delivered, pipe_enq_s + enqueued, non_202 + odd
            rates.append((noop_each / seconds, pages_each / delivered))
        rss = rss_mb(pagerduty_pid)
    finally:
        client.close()
    noop_rate = noop_each * rounds / noop_s
    pipe_rate = pages_each * rounds / pipe_s
    ctx.log(
        f"  no-op {noop_rate:.0f}/s, pipeline {pipe_rate:.0f}/s, "
        f"ratio {pipe_rate / noop_rate:.3f} (rounds: "
        + ", ".join(f"{n:.0f}/{p:.0f}" for n, p in rates)
        + ")"
    )
    return {
        "celery_noop_per_s": round(noop_rate, 1),
        "pipeline_per_s": round(pipe_rate, 1),
        "pipeline_vs_noop": round(pipe_rate / noop_rate, 3),
        "worker_rss_mb": round(rss, 1),
        "details": {
            "rounds": rounds,
            "noop_tasks": noop_each * rounds,
            "pages": pages_each * rounds,
            "noop_publish_per_s": round(noop_each * rounds / noop_pub_s, 1),
            "pipeline_enqueue_per_s": round(pages_each * rounds / pipe_enq_s, 1),
            "per_round_noop_and_pipeline_per_s": [[round(n, 1), round(p, 1)] for n, p in rates],
            "non_202": non_202,
            "pool": noop_spec.pool,
            "concurrency": noop_spec.concurrency,
            "rss_of": "the pagerduty pool's worker process",
        },
    }
