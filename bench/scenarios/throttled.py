"""``throttled_drain``: ``throttled_triggers`` triggers for one routing key, queued at
once, while the sandbox allows that key ``throttled_rate`` events per second (answering
429 beyond it, without Retry-After, as PagerDuty does) and the service is configured with
the same limit (``PAGERDUTY_RATE_LIMIT``). Two ``pagerduty`` pool processes share the
limiter through Redis, as a scaled-out deployment would.

- ``seconds``: first enqueue to the last accepted (202) trigger;
- ``minimum_seconds``: what the limit allows: ``ceil(n / rate) - 1`` full windows;
- ``ratio``: the two divided; ``responses_429``: how often the service overran the limit;
- ``lost``: triggers that opened no incident; ``duplicate_incidents``: incidents beyond
  one per trigger (each trigger has its own dedup key).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import tasks
from bench.context import Context
from bench.measure import BenchError, wait_drained, wait_until
from bench.procfile import pool
from bench.scenarios.pipeline import page
from config.queues import PAGERDUTY_QUEUE
from worker.engine import keys as redis_keys

NAME = "throttled"
WINDOW = 1.0


def run(ctx: Context) -> dict[str, Any]:
    rate, count = ctx.sizes.throttled_rate, ctx.sizes.throttled_triggers
    deployed = pool("pagerduty")
    ctx.stack.pools(
        [("pagerduty1", deployed), ("pagerduty2", deployed)],
        env={"PAGERDUTY_RATE_LIMIT": f"{rate}/second"},
    )
    client = ctx.stack.redis()
    ctx.fresh_sandbox()
    ctx.sandbox.settings(rate_limit=rate, rate_window=WINDOW, retry_after=False)
    ids = ctx.ids("throttled", count)
    pages = [page(key, i) for i, key in enumerate(ids)]
    minimum = (math.ceil(count / rate) - 1) * WINDOW
    timed_out = False
    try:
        started = time.time()
        for notification in pages:
            tasks.enqueue(notification)

        def opened() -> bool:
            return len(ctx.sandbox.incidents()) >= count

        try:
            wait_until(opened, 3 * minimum + 60, f"{count} incidents", interval=0.5)
            # Let anything still held (a retry, a duplicate) arrive before counting.
            wait_drained(client, [PAGERDUTY_QUEUE], timeout=30)
        except BenchError as exc:
            timed_out = True
            ctx.log(f"  warning: {exc}")
        events = ctx.sandbox.events()
        incidents = ctx.sandbox.incidents()
        dead = int(client.hlen(redis_keys.DEAD_LETTERS))
    finally:
        ctx.sandbox.settings(rate_limit=0)
        client.close()
        ctx.stack.stop_pools()

    accepted = [float(e["at"]) for e in events if e.get("status") == 202]
    seconds = (max(accepted) - started) if accepted else float("nan")
    per_key = Counter(str(i["dedup_key"]) for i in incidents)
    wanted = set(ids)
    lost = len(wanted - set(per_key))
    duplicates = sum(n - 1 for key, n in per_key.items() if key in wanted and n > 1)
    responses_429 = sum(1 for e in events if e.get("status") == 429)
    ratio = seconds / minimum if minimum > 0 else float("nan")
    ctx.log(
        f"  throttled drain: {seconds:.2f} s (minimum {minimum:.0f} s, ratio {ratio:.3f}), "
        f"{responses_429} x 429, {lost} lost, {duplicates} duplicate incidents"
    )
    return {
        "throttled_drain": {
            "seconds": round(seconds, 3),
            "minimum_seconds": round(minimum, 3),
            "ratio": round(ratio, 3),
            "responses_429": responses_429,
            "lost": lost,
            "duplicate_incidents": duplicates,
        },
        "details": {
            "triggers": count,
            "rate_per_s": rate,
            "worker_processes": 2,
            "requests": len(events),
            "repeated_triggers": sum(
                int(i["alert_count"]) - 1 for i in incidents if i["dedup_key"] in wanted
            ),
            "dead_lettered": dead,
            "timed_out": timed_out,
        },
    }
