"""Pages per second beside what they are compared with, in alternating rounds so that each
figure sees the same background load of a shared machine (measured one after the other, a
neighbour's test run could decide a ratio):

- ``celery_noop_per_s``: no-op tasks (Celery's own cost per message);
- ``bare_http_per_s``: a bare Celery task POSTing the same event to the same emulator
  (:mod:`bench.scenarios.baselines`), one worker with the ``pagerduty`` pool's command line;
- ``pipeline_per_s``: pages end to end through one ``pagerduty`` pool process
  (:mod:`bench.scenarios.pipeline`); ``pipeline_two_processes_per_s``: the same through
  two processes of that pool, as ``honcho start -c pagerduty=2`` or compose's
  ``--scale worker-pagerduty=2`` runs it (the second process is told to stop consuming
  pages for the one-process rounds);
- ``alertmanager_per_s``: Prometheus Alertmanager paging the same emulator, one alert
  per group, no grouping delay (:mod:`bench.scenarios.alertmanager`), when installed.

Each rate is its total count over its total time. ``cpu_ms_per_1000_pages`` is what each
process spent per 1,000 pages in each kind of round (the producer is this harness's
process: it builds and enqueues, and polls the emulator). ``worker_rss_mb`` is the
``pagerduty`` pool's resident memory after the last round.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import Context
from bench.measure import CpuMeter, rss_mb
from bench.pool_control import control
from bench.procfile import pool
from bench.scenarios import alertmanager, baselines, pipeline
from config.queues import PAGERDUTY_QUEUE

NAME = "throughput"
#: Seconds for a pool told to consume again to be back at full speed.
SETTLE_SECONDS = 1.0


def run(ctx: Context) -> dict[str, Any]:
    stack = ctx.stack
    deployed = pool("pagerduty")
    baseline, first, second, _ = stack.pools(
        [
            ("baseline-http", baselines.http_spec()),
            ("pagerduty", deployed),
            ("pagerduty-2", deployed),
            ("email", pool("email")),
        ]
    )
    pid = {
        "baseline": baseline.proc.pid if baseline.proc else None,
        "pagerduty": first.proc.pid if first.proc else None,
        "pagerduty-2": second.proc.pid if second.proc else None,
        "redis": stack.local_redis.pid if stack.local_redis else None,
        "emulator": stack.sandbox.proc.pid if stack.sandbox and stack.sandbox.proc else None,
        "producer": stack.harness_pid,
    }
    shared = {k: pid[k] for k in ("producer", "redis", "emulator")}
    am = alertmanager.start(ctx) if alertmanager.ALERTMANAGER else None
    client = stack.redis()
    rounds = ctx.sizes.throughput_rounds
    noop_each = max(1, ctx.sizes.noop_tasks // rounds)
    each = max(1, ctx.sizes.pipeline_notifications // rounds)
    seconds = dict.fromkeys(("noop", "bare_http", "pipeline", "two", "alertmanager"), 0.0)
    published = dict.fromkeys(("noop", "bare_http", "pipeline"), 0.0)
    per_round: list[dict[str, float]] = []
    non_202 = 0
    cpu = CpuMeter()
    consuming = True
    try:
        baselines.noop_round(ctx, client, ctx.sizes.warmup)
        baselines.http_round(ctx, ctx.sizes.warmup, "warmup")
        pipeline.warm_up(ctx)
        if am is not None:
            alertmanager.one_round(ctx, am, ctx.sizes.warmup, "warmup")
        for r in range(rounds):
            rates: dict[str, float] = {}
            with cpu.measure("noop", noop_each, {"worker": pid["baseline"], **shared}):
                took, pub = baselines.noop_round(ctx, client, noop_each)
            seconds["noop"] += took
            published["noop"] += pub
            rates["noop"] = noop_each / took
            with cpu.measure("bare_http", each, {"worker": pid["baseline"], **shared}):
                took, pub = baselines.http_round(ctx, each, str(r))
            seconds["bare_http"] += took
            published["bare_http"] += pub
            rates["bare_http"] = each / took

            control("cancel_consumer", "pagerduty-2", PAGERDUTY_QUEUE)
            consuming = False
            with cpu.measure("pipeline", each, {"worker": pid["pagerduty"], **shared}):
                took, pub, odd = pipeline.one_round(ctx, each, f"one-{r}")
            seconds["pipeline"] += took
            published["pipeline"] += pub
            non_202 += odd
            rates["pipeline"] = each / took
            control("add_consumer", "pagerduty-2", PAGERDUTY_QUEUE)
            consuming = True
            time.sleep(SETTLE_SECONDS)
            workers = {"worker": pid["pagerduty"], "worker-2": pid["pagerduty-2"]}
            with cpu.measure("pipeline_two_processes", each, {**workers, **shared}):
                took, _, odd = pipeline.one_round(ctx, each, f"two-{r}")
            seconds["two"] += took
            non_202 += odd
            rates["two"] = each / took

            if am is not None:
                with cpu.measure(
                    "alertmanager",
                    each,
                    {
                        "alertmanager": am.pid,
                        "producer": pid["producer"],
                        "emulator": pid["emulator"],
                    },
                ):
                    took = alertmanager.one_round(ctx, am, each, str(r))
                seconds["alertmanager"] += took
                rates["alertmanager"] = each / took
            per_round.append({k: round(v, 1) for k, v in rates.items()})
        rss = rss_mb(pid["pagerduty"] or 0)
    finally:
        if not consuming:
            control("add_consumer", "pagerduty-2", PAGERDUTY_QUEUE)
        if am is not None:
            am.stop()
        client.close()

    total = each * rounds
    noop_rate = noop_each * rounds / seconds["noop"]
    bare = total / seconds["bare_http"]
    one = total / seconds["pipeline"]
    two = total / seconds["two"]
    figures: dict[str, Any] = {
        "celery_noop_per_s": round(noop_rate, 1),
        "bare_http_per_s": round(bare, 1),
        "pipeline_per_s": round(one, 1),
        "pipeline_two_processes_per_s": round(two, 1),
        "pipeline_vs_noop": round(one / noop_rate, 3),
        "pipeline_vs_bare_http": round(one / bare, 3),
        "pipeline_two_processes_vs_one": round(two / one, 3),
    }
    line = (
        f"  no-op {noop_rate:.0f}/s, bare HTTP {bare:.0f}/s, pipeline {one:.0f}/s "
        f"(vs bare {one / bare:.3f}), two processes {two:.0f}/s ({two / one:.2f}x)"
    )
    if am is not None:
        am_rate = total / seconds["alertmanager"]
        figures["alertmanager_per_s"] = round(am_rate, 1)
        # Our best layout on this machine (every core) against Alertmanager's (every core).
        figures["pipeline_vs_alertmanager"] = round(two / am_rate, 3)
        line += f", Alertmanager {am_rate:.0f}/s"
    else:
        ctx.log("  Alertmanager is not installed: pipeline_vs_alertmanager not measured")
    ctx.log(line)
    figures["cpu_ms_per_1000_pages"] = cpu.per_thousand_ms()
    figures["worker_rss_mb"] = round(rss, 1)
    figures["details"] = {
        "rounds": rounds,
        "noop_tasks": noop_each * rounds,
        "pages_per_kind": total,
        "noop_publish_per_s": round(noop_each * rounds / published["noop"], 1),
        "bare_http_publish_per_s": round(total / published["bare_http"], 1),
        "pipeline_enqueue_per_s": round(total / published["pipeline"], 1),
        "per_round_per_s": per_round,
        "non_202": non_202,
        "pool": deployed.pool,
        "concurrency": deployed.concurrency,
        "rss_of": "the pagerduty pool's worker process",
        "alertmanager": alertmanager.describe() if am is not None else "not installed",
    }
    return figures
