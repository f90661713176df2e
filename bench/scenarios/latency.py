"""``page_latency_ms`` and ``page_latency_backlog_ms``: from the moment a producer calls
``tasks.enqueue`` to the sandbox's receipt of the page, for pages sent as a trickle (one
every ``latency_interval`` seconds), with nothing else running, and with
``backlog_emails`` emails queued and the email pool working through them.
``page_backlog_ratio`` is p99 loaded over p99 unloaded.

The backlog is built the way it builds in production when the email pool falls behind:
the pool is told to stop consuming (Celery's ``cancel_consumer``), the emails are queued,
and then the two conditions alternate in ``latency_rounds`` rounds: pages with the pool
stopped (the emails wait in Redis, costing nothing), then pages with it working
(``add_consumer``). Alternating means both figures see the same background noise of a
shared machine, which would otherwise decide their ratio.
"""

from __future__ import annotations

import time
from typing import Any

import tasks
from bench.context import Context, delivered_at, pause
from bench.measure import (
    in_flight,
    queue_depth,
    summary_ms,
    wait_drained,
    wait_until,
)
from bench.pool_control import control
from bench.scenarios.pipeline import page
from config.queues import EMAIL_QUEUE, INTAKE_QUEUE, PAGERDUTY_QUEUE
from worker.celery_app import app
from worker.notification import Notification

NAME = "latency"
LOADED_SETTLE_SECONDS = 1.0


def email(key: str, n: int) -> Notification:
    return Notification(
        recipient=f"reader{n % 500}@example.com",
        subject=f"Nightly capacity report {n}",
        body="All databases within limits.\n" * 20,
        idempotency_id=key,
    )


def trickle(ctx: Context, scenario: str, count: int) -> dict[str, float]:
    """Send pages one at a time at a steady pace; returns each one's enqueue time."""
    sent: dict[str, float] = {}
    next_at = time.monotonic()
    for i, key in enumerate(ctx.ids(scenario, count)):
        notification = page(key, i)
        pause(next_at - time.monotonic())
        sent[key] = time.time()
        tasks.enqueue(notification)
        next_at += ctx.sizes.latency_interval
    return sent


def measure(ctx: Context, scenario: str, count: int) -> list[float]:
    base = ctx.fresh_sandbox()
    sent = trickle(ctx, scenario, count)
    ctx.wait_for_events(base, len(sent), timeout=120)
    received = delivered_at(ctx.sandbox.events(), set(sent))
    return [received[key] - at for key, at in sent.items()]


def run(ctx: Context) -> dict[str, Any]:
    ctx.deployed_pools()
    warm = ctx.ids("latency-warmup", ctx.sizes.warmup)
    base = ctx.fresh_sandbox()
    for i, key in enumerate(warm):
        tasks.enqueue(page(key, i))
    ctx.wait_for_events(base, len(warm), timeout=60)

    client = ctx.stack.redis()
    emails = [email(key, i) for i, key in enumerate(ctx.ids("backlog", ctx.sizes.backlog_emails))]
    rounds = ctx.sizes.latency_rounds
    each = max(1, ctx.sizes.latency_pages // rounds)
    unloaded: list[float] = []
    loaded: list[float] = []
    depths: list[int] = []
    drained_per_s: list[float] = []
    consuming = True
    try:
        control("cancel_consumer", "email", EMAIL_QUEUE)
        consuming = False
        ctx.produce(emails, tasks.enqueue)
        queued = queue_depth(client, EMAIL_QUEUE)
        for r in range(rounds):
            # Quiet: whatever the email pool still held is finished.
            wait_until(lambda: in_flight(client) == 0, 60, "the email pool to go quiet")
            unloaded += measure(ctx, f"latency-unloaded-{r}", each)
            control("add_consumer", "email", EMAIL_QUEUE)
            consuming = True
            # Let the pool reach full speed (consumer restarted, prefetch refilled) first:
            # pages sent into its first second would meet a pool still ramping up.
            depth = queue_depth(client, EMAIL_QUEUE)
            time.sleep(LOADED_SETTLE_SECONDS)
            began = time.monotonic()
            loaded += measure(ctx, f"latency-backlog-{r}", each)
            depths.append(queue_depth(client, EMAIL_QUEUE))
            drained_per_s.append(
                (depth - depths[-1]) / (time.monotonic() - began + LOADED_SETTLE_SECONDS)
            )
            control("cancel_consumer", "email", EMAIL_QUEUE)
            consuming = False
        # The backlog has done its job; the rest would only slow the next scenario down.
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(EMAIL_QUEUE)
    finally:
        if not consuming:
            control("add_consumer", "email", EMAIL_QUEUE)
        wait_drained(client, [PAGERDUTY_QUEUE, INTAKE_QUEUE, EMAIL_QUEUE], timeout=120)
        client.close()
    quiet, busy = summary_ms(unloaded), summary_ms(loaded)
    ratio = busy["p99"] / quiet["p99"]
    ctx.log(f"  page latency: unloaded {quiet}, with backlog {busy}, ratio {ratio:.2f}")
    if min(depths) == 0:
        ctx.log("  warning: the email backlog ran out while pages were measured")
    return {
        "page_latency_ms": quiet,
        "page_latency_backlog_ms": busy,
        "page_backlog_ratio": round(ratio, 3),
        "details": {
            "pages_each": len(unloaded),
            "rounds": rounds,
            "interval_s": ctx.sizes.latency_interval,
            "emails_queued": queued,
            "emails_still_queued_after_each_loaded_round": depths,
            "emails_sent_per_s_in_loaded_rounds": [round(x, 1) for x in drained_per_s],
            "max_ms": {
                "unloaded": round(max(unloaded) * 1000, 2),
                "backlog": round(max(loaded) * 1000, 2),
            },
        },
    }
