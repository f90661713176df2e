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

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.measure import BenchError
from bench.procfile import ROOT
from cli.dev_stack import Service, wait_ready
from config.api_tokens import new_token, token_hash
from sandbox.redis_server import free_port

NAME = "api"

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

_LATENCY = re.compile(r"^\s+(50|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _stored_jobs(ctx: Context) -> int:
    client = ctx.stack.redis()
    try:
        return sum(1 for key in client.scan_iter("gds:job:*", count=1000) if key.count(":") == 2)
    finally:
        client.close()


def run(ctx: Context) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        ctx.log("  wrk is not installed (Debian's wrk): not measured")
        return {"details": {"skipped": "wrk is not installed"}}
    ctx.stack.stop_pools()
    token = new_token()
    port = free_port()
    env = ctx.stack.child_env(
        {
            "API_TOKENS": json.dumps(
                [{"name": "bench", "sha256": token_hash(token), "scopes": ["notify"]}]
            ),
            "API_RATE_LIMIT": "100000000/minute",
        }
    )
    argv = [sys.executable, "-m", "cli.main", "api", "--port", str(port)]
    argv += ["--workers", str(ctx.sizes.api_workers), "--no-access-log"]
    service = Service("api", argv, f"http://127.0.0.1:{port}/healthz", ctx.stack.logs / "api.log")
    service.log.write_bytes(b"")
    service.start(env, ROOT)
    ctx.stack.started_pids.append(service.proc.pid if service.proc else 0)
    # Each run its own idempotency ids: a repeat of the warm-up's would be a duplicate.
    scripts = {}
    for run_name in ("warm", "measured"):
        scripts[run_name] = ctx.stack.workdir / f"api_post_{run_name}.lua"
        scripts[run_name].write_text(WRK_SCRIPT.replace("RUN", f"bench-{ctx.run_id}-{run_name}"))
    try:
        wait_ready([service], 60, hint=f" (log in {service.log})")
        before = _stored_jobs(ctx)
        url = f"http://127.0.0.1:{port}"
        header = ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
        # A short run first: connections, imports and caches warm in every API process.
        _wrk(wrk, url, scripts["warm"], header, 2, min(8, ctx.sizes.api_connections), "2s")
        warm = _stored_jobs(ctx) - before
        done = _wrk(
            wrk,
            url,
            scripts["measured"],
            header,
            2,
            ctx.sizes.api_connections,
            f"{ctx.sizes.api_seconds}s",
        )
        stored = _stored_jobs(ctx) - before - warm
    finally:
        service.signal(15)
        service.wait(15)
        service.close()
        ctx.stack.redis().flushdb()
    accepted = done["requests"] - done["non_2xx"]
    # wrk counts the answers that arrived in time; up to one request per connection was
    # still in flight when it stopped, and stored.
    if not accepted <= stored <= accepted + ctx.sizes.api_connections:
        raise BenchError(f"the API answered 202 {accepted} times but stored {stored} jobs")
    per_s = accepted / done["seconds"]
    ctx.log(
        f"  api: {per_s:.0f} accepted/s, p50 {done['p50']:.1f} ms, p99 {done['p99']:.1f} ms "
        f"({ctx.sizes.api_connections} connections, {done['non_2xx']} not 202)"
    )
    return {
        "api_accepted_per_s": round(per_s, 1),
        "api_latency_ms": {"p50": done["p50"], "p90": done["p90"], "p99": done["p99"]},
        "details": {
            "connections": ctx.sizes.api_connections,
            "seconds": done["seconds"],
            "requests": done["requests"],
            "not_202": done["non_2xx"],
            "jobs_stored": stored,
            "api_workers": ctx.sizes.api_workers,
            "load": "wrk -t2, one new page per request (its own idempotency id)",
        },
    }


def _wrk(
    wrk: str,
    url: str,
    script: Path,
    header: list[str],
    threads: int,
    connections: int,
    duration: str,
) -> dict[str, Any]:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency"]
    argv += ["-s", str(script), *header, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr.strip()[-300:]}")
    out = done.stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if found is None:
        raise BenchError(f"wrk's output was not understood: {out[-300:]}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[found.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latencies = {f"p{p}": round(float(v) * _UNIT_MS[u], 2) for p, v, u in _LATENCY.findall(out)}
    return {
        "requests": int(found.group(1)),
        "seconds": float(found.group(2)) * unit,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        **latencies,
    }
