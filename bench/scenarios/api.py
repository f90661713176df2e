"""``api_accepted_per_s`` and ``api_latency_ms``: notifications accepted per second over HTTP
(``POST /v1/notifications``, each a page with its own idempotency id, so each is a new
job), with the latency clients saw, from Debian's wrk in a process of its own.

The API runs as ``gds-notify api --workers 2`` (the Procfile's command line) against the
stack's Redis, with no worker consuming: the figure is the door, not delivery. wrk keeps
``api_connections`` connections busy for ``api_seconds``; every answer that was not a 202
is counted, and the jobs stored in Redis must match the 202s (give or take the requests
still in flight when wrk stopped). Without wrk (``make bench``
installs it when it can) the scenario says so and measures nothing.
"""

from __future__ import annotations

import time
from typing import Any

from bench import http_load
from bench.context import Context
from bench.measure import BenchError

NAME = "api"
#: How long the count of stored jobs must hold still to be taken as final.
SETTLE_SECONDS = 0.3

#: Makes each request a distinct page (its own idempotency id), as wrk sends it.
WRK_SCRIPT = """
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tid
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"recipient": "db-bench-01", "subject": "Replication lag on db-bench-01 (%d)", ' ..
    '"body": "Seconds behind primary: 412. Threshold: 300.", "priority": "critical", ' ..
    '"alert_name": "ReplicationLag", "idempotency_id": "RUN-%d-%d", ' ..
    '"metadata": {"team": "dba", "region": "eu-west-2"}}',
    counter, thread_id, counter)
  return wrk.format("POST", "/v1/notifications", nil, body)
end
"""


def _stored_jobs(ctx: Context) -> int:
    client = ctx.stack.redis()
    try:
        return sum(1 for key in client.scan_iter("gds:job:*", count=1000) if key.count(":") == 2)
    finally:
        client.close()


def _settled_jobs(ctx: Context) -> int:
    """The stored jobs once requests still in flight when wrk stopped have landed: the
    count, when it no longer moves."""
    count = _stored_jobs(ctx)
    for _ in range(50):
        time.sleep(SETTLE_SECONDS)
        again = _stored_jobs(ctx)
        if again == count:
            return count
        count = again
    raise BenchError("the count of stored jobs kept moving after wrk stopped")


def run(ctx: Context) -> dict[str, Any]:
    if http_load.wrk_path() is None:
        ctx.log("  wrk is not installed (Debian's wrk): not measured")
        return {"details": {"skipped": "wrk is not installed"}}
    ctx.stack.stop_pools()
    connections = ctx.sizes.api_connections
    try:
        with http_load.api(ctx, ["notify"]) as target:
            before = _stored_jobs(ctx)
            # A short run first: connections, imports and caches warm in every API process.
            # Each run its own idempotency ids: a repeat of the warm-up's would be a duplicate.
            warm_script = WRK_SCRIPT.replace("RUN", f"bench-{ctx.run_id}-warm")
            http_load.wrk(ctx, target, warm_script, min(8, connections), 2, "api_warm")
            # Its last requests may still be in flight: counted once they have landed.
            warm = _settled_jobs(ctx) - before
            script = WRK_SCRIPT.replace("RUN", f"bench-{ctx.run_id}-measured")
            done = http_load.wrk(ctx, target, script, connections, ctx.sizes.api_seconds, "api")
            stored = _stored_jobs(ctx) - before - warm
    finally:
        ctx.stack.redis().flushdb()
    accepted = done["requests"] - done["non_2xx"]
    # wrk counts the answers that arrived in time; up to one request per connection was
    # still in flight when it stopped, and stored.
    if not accepted <= stored <= accepted + connections:
        raise BenchError(f"the API answered 202 {accepted} times but stored {stored} jobs")
    per_s = accepted / done["seconds"]
    ctx.log(
        f"  api: {per_s:.0f} accepted/s, p50 {done['p50']:.1f} ms, p99 {done['p99']:.1f} ms "
        f"({connections} connections, {done['non_2xx']} not 202)"
    )
    return {
        "api_accepted_per_s": round(per_s, 1),
        "api_latency_ms": {"p50": done["p50"], "p90": done["p90"], "p99": done["p99"]},
        "details": {
            "connections": connections,
            "seconds": done["seconds"],
            "requests": done["requests"],
            "not_202": done["non_2xx"],
            "jobs_stored": stored,
            "api_workers": ctx.sizes.api_workers,
            "load": "wrk -t2, one new page per request (its own idempotency id)",
        },
    }
