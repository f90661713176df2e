"""``heartbeat_check_ms_10k``: one evaluation of the heartbeat checker (what the
``heartbeat.check`` task runs) over ``heartbeat_services`` services, against the stack's
Redis. The catalogue mixes what a real one holds: four priorities, thresholds of 1-3,
one service in ten with a maintenance window (half of them recurring cron windows in a
time zone). Most services have reported; some failed, some fell silent.

The first evaluation (every service new, every state written) is reported in the details;
the figure is the median of the steady-state evaluations after it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.context import Context
from config.catalogue import Catalogue
from worker.engine import keys
from worker.engine.heartbeats.checker import HeartbeatChecker
from worker.engine.heartbeats.evaluation import Action
from worker.engine.heartbeats.store import HeartbeatStatus, Ping
from worker.engine.runtime import engine

NAME = "heartbeat"
PRIORITIES = ("P1", "P2", "P3", "P4")


def catalogue(count: int) -> Catalogue:
    services: dict[str, dict[str, Any]] = {}
    for i in range(count):
        entry: dict[str, Any] = {
            "name": f"Service {i}",
            "team": f"team-{i % 40}",
            "priority": PRIORITIES[i % 4],
            "window": "5m",
            "threshold": 1 + i % 3,
            "grace": "30s",
            "runbook_url": f"https://runbooks.example/svc-{i}",
        }
        if i % 20 == 0:
            entry["maintenance"] = [
                {"cron": "0 2 * * SUN", "duration": "2h", "timezone": "Europe/London"}
            ]
        elif i % 20 == 10:
            entry["maintenance"] = [
                {"start": "2026-12-01T22:00:00Z", "end": "2026-12-01T23:30:00Z"}
            ]
        services[f"svc-{i:05d}"] = entry
    return Catalogue.model_validate({"services": services})


def _clear(client: Any) -> None:
    doomed = list(client.scan_iter(match=f"{keys.PREFIX}hb:*", count=1000))
    for start in range(0, len(doomed), 1000):
        client.delete(*doomed[start : start + 1000])


def run(ctx: Context) -> dict[str, Any]:
    count = ctx.sizes.heartbeat_services
    cat = catalogue(count)
    client = engine().redis
    _clear(client)
    store = engine().heartbeats
    for i, spec in enumerate(cat.services.values()):
        if i % 20 == 7:
            continue  # fell silent
        status: HeartbeatStatus = "fail" if i % 20 == 13 else "up"
        for _ in range(spec.threshold):
            store.record(spec, Ping(kind=status))

    sent: list[Action] = []

    def sender(action: Action) -> str:  # the check's pages are not the point here
        sent.append(action)
        return "bench-not-queued"

    checker = HeartbeatChecker(client, store, engine().locks, check_interval=15.0)
    first = _timed(checker, cat, sender)
    steady = [_timed(checker, cat, sender) for _ in range(ctx.sizes.heartbeat_repeats)]
    figure = statistics.median(steady)
    _clear(client)
    ctx.log(f"  heartbeat check over {count} services: {figure:.0f} ms (first {first:.0f} ms)")
    return {
        "heartbeat_check_ms_10k": round(figure, 1),
        "details": {
            "services": count,
            "first_check_ms": round(first, 1),
            "steady_checks_ms": [round(ms, 1) for ms in steady],
            "pages_called_for": len(sent),
        },
    }


def _timed(checker: HeartbeatChecker, cat: Catalogue, sender: Any) -> float:
    started = time.perf_counter()
    report = checker.run(cat, sender)
    if report.skipped:
        raise RuntimeError("the heartbeat check was skipped: another checker holds the lock")
    return (time.perf_counter() - started) * 1000
