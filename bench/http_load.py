"""Load over HTTP for the API scenarios: ``gds-notify api`` as the Procfile runs it, on a
free port with a token made for the run, and Debian's wrk (a C load generator, in a
process of its own) driving it with a Lua script."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.context import Context
from bench.measure import BenchError
from bench.procfile import ROOT
from cli.dev_stack import Service, wait_ready
from config.api_tokens import new_token, token_hash
from sandbox.redis_server import free_port

_LATENCY = re.compile(r"^\s+(50|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Api:
    url: str
    token: str


def wrk_path() -> str | None:
    return shutil.which("wrk")


@contextlib.contextmanager
def api(ctx: Context, scopes: list[str], env: dict[str, str] | None = None) -> Iterator[Api]:
    """``gds-notify api --workers N`` with a token of ``scopes``, no limit on its rate and
    no access log, until the block ends."""
    token = new_token()
    port = free_port()
    child_env = ctx.stack.child_env(
        {
            "API_TOKENS": json.dumps(
                [{"name": "bench", "sha256": token_hash(token), "scopes": scopes}]
            ),
            "API_RATE_LIMIT": "100000000/minute",
            "PING_RATE_LIMIT": "100000000/minute",
            **(env or {}),
        }
    )
    argv = [sys.executable, "-m", "cli.main", "api", "--port", str(port)]
    argv += ["--workers", str(ctx.sizes.api_workers), "--no-access-log"]
    service = Service("api", argv, f"http://127.0.0.1:{port}/healthz", ctx.stack.logs / "api.log")
    service.log.write_bytes(b"")
    service.start(child_env, ROOT)
    if service.proc is not None:
        ctx.stack.started_pids.append(service.proc.pid)
    try:
        wait_ready([service], 60, hint=f" (log in {service.log})")
        yield Api(f"http://127.0.0.1:{port}", token)
    finally:
        service.signal(15)
        service.wait(15)
        service.close()


def wrk(
    ctx: Context, target: Api, script: str, connections: int, seconds: float, name: str
) -> dict[str, Any]:
    """Run wrk (2 threads) with the Lua ``script`` against ``target``; the requests, the
    time, the answers that were not 2xx, and the latency percentiles (ms)."""
    binary = wrk_path()
    if binary is None:
        raise BenchError("wrk is not installed")
    path = ctx.stack.workdir / f"{name}.lua"
    path.write_text(script)
    argv = [binary, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(path)]
    argv += ["-H", f"Authorization: Bearer {target.token}"]
    argv += ["-H", "Content-Type: application/json", target.url]
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
