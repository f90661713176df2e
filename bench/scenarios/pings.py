"""``pings_per_s`` and ``ping_latency_ms``: Healthchecks-style pings over HTTP
(``GET /ping/{key}/{slug}``, as a crontab's curl sends them) spread over
``ping_services`` services, from Debian's wrk in a process of its own, against
``gds-notify api --workers 2``. Every answer must be ``OK``; the services' newest
heartbeats must be from the run.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import http_load
from bench.context import Context
from bench.measure import BenchError
from bench.scenarios.heartbeat import catalogue

NAME = "pings"

#: One ping per request, round-robin over the services (the key is in the path).
WRK_SCRIPT = """
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("/ping/KEY/svc-%05d", counter % SERVICES))
end
"""


def run(ctx: Context) -> dict[str, Any]:
    if http_load.wrk_path() is None:
        ctx.log("  wrk is not installed (Debian's wrk): not measured")
        return {"details": {"skipped": "wrk is not installed"}}
    ctx.stack.stop_pools()
    services = ctx.sizes.ping_services
    path = ctx.stack.workdir / "ping-services.toml"
    lines = []
    for slug, spec in catalogue(services).services.items():
        lines.append(f"[services.{slug}]")
        lines += [
            f'name = "{spec.name}"',
            f'team = "{spec.team}"',
            f'priority = "{spec.priority}"',
            "window = 300",
            f"threshold = {spec.threshold}",
            f'runbook_url = "{spec.runbook_url}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    connections = ctx.sizes.api_connections
    started = time.time()
    try:
        with http_load.api(ctx, ["heartbeat"], {"HEARTBEAT_SERVICES_FILE": str(path)}) as target:
            script = WRK_SCRIPT.replace("KEY", target.token).replace("SERVICES", str(services))
            http_load.wrk(ctx, target, script, min(8, connections), 2, "pings_warm")
            done = http_load.wrk(ctx, target, script, connections, ctx.sizes.api_seconds, "pings")
            last = ctx.stack.redis().hgetall("gds:hb:last")
    finally:
        ctx.stack.redis().flushdb()
    if done["non_2xx"]:
        raise BenchError(f"{done['non_2xx']} pings were not answered OK")
    fresh = sum(1 for raw in last.values() if json.loads(raw)["at"] >= started)
    if fresh != services:
        raise BenchError(f"{fresh} of {services} services have a heartbeat from the run")
    per_s = done["requests"] / done["seconds"]
    ctx.log(
        f"  pings: {per_s:.0f}/s, p50 {done['p50']:.1f} ms, p99 {done['p99']:.1f} ms "
        f"({connections} connections over {services} services)"
    )
    return {
        "pings_per_s": round(per_s, 1),
        "ping_latency_ms": {"p50": done["p50"], "p90": done["p90"], "p99": done["p99"]},
        "details": {
            "services": services,
            "services_with_a_heartbeat": fresh,
            "connections": connections,
            "seconds": done["seconds"],
            "requests": done["requests"],
            "api_workers": ctx.sizes.api_workers,
            "load": "wrk -t2, GET /ping/{key}/{slug} round-robin over the services",
        },
    }
