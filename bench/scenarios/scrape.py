"""``metrics_scrape_ms``: ``GET /metrics`` on ``gds-notify api`` while Redis holds what a
bad day leaves: ``scrape_queued`` delivery messages waiting on the pagerduty queue (no
worker consuming), ``scrape_dead_letters`` dead letters, and the states of
``heartbeat_services`` services from a real check. Each scrape is timed from the request
to the last byte; every answer must parse and show the queue's depth."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import http_load
from bench.context import Context
from bench.measure import BenchError
from bench.scenarios.heartbeat import catalogue
from config.queues import PAGERDUTY_QUEUE
from worker.channels import Channel
from worker.engine.heartbeats.checker import HeartbeatChecker
from worker.engine.messages import delivery_id, delivery_message
from worker.engine.runtime import engine

NAME = "scrape"
BATCH = 10_000


def _fill(ctx: Context) -> None:
    client = ctx.stack.redis()
    payload = {
        "job_id": "bench",
        "channel": "pagerduty",
        "action": "trigger",
        "notification": {"recipient": "db-1", "subject": "Disk full", "priority": "critical"},
        "enqueued_at": time.time(),
    }
    _, message = delivery_message(
        Channel.PAGERDUTY, delivery_id("bench", Channel.PAGERDUTY), payload
    )
    left = ctx.sizes.scrape_queued
    while left > 0:
        n = min(BATCH, left)
        client.lpush(PAGERDUTY_QUEUE, *([message] * n))
        left -= n
    letters = engine().dead_letters
    for i in range(ctx.sizes.scrape_dead_letters):
        channel = ("pagerduty", "email", "intake")[i % 3]
        letters.add(entry_id=f"bench-{i}", job_id=None, channel=channel, reason="bench", payload={})
    cat = catalogue(ctx.sizes.heartbeat_services)
    checker = HeartbeatChecker(client, engine().heartbeats, engine().locks, check_interval=15.0)
    checker.run(cat, lambda action: "bench-not-queued")


def run(ctx: Context) -> dict[str, Any]:
    ctx.stack.stop_pools()
    try:
        _fill(ctx)
        timings = []
        with http_load.api(ctx, ["notify"]) as target, httpx.Client(timeout=30) as http:
            for _ in range(ctx.sizes.scrape_repeats + 1):
                started = time.perf_counter()
                answer = http.get(f"{target.url}/metrics")
                timings.append((time.perf_counter() - started) * 1000)
                depth = _queue_depth(answer.text)
                if depth != ctx.sizes.scrape_queued:
                    raise BenchError(
                        f"/metrics shows {depth} queued, not {ctx.sizes.scrape_queued}"
                    )
    finally:
        ctx.stack.redis().flushdb()
    steady = timings[1:]  # the first also warms the API process
    p50, worst = statistics.median(steady), max(steady)
    ctx.log(
        f"  /metrics with {ctx.sizes.scrape_queued} queued, {ctx.sizes.heartbeat_services} "
        f"services: p50 {p50:.1f} ms, max {worst:.1f} ms"
    )
    return {
        "metrics_scrape_ms": {"p50": round(p50, 1), "max": round(worst, 1)},
        "details": {
            "queued_messages": ctx.sizes.scrape_queued,
            "dead_letters": ctx.sizes.scrape_dead_letters,
            "heartbeat_services": ctx.sizes.heartbeat_services,
            "first_scrape_ms": round(timings[0], 1),
            "scrapes_ms": [round(t, 1) for t in steady],
        },
    }


def _queue_depth(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gds_notify_queue_messages" and sample.labels["queue"] == "pagerduty":
                return sample.value
    raise BenchError("/metrics has no gds_notify_queue_messages for the pagerduty queue")
