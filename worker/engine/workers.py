"""Which workers are up: each one says so every few seconds (worker/presence.py), and
readiness probes and metrics read it back. Times are Redis server time, so hosts with
skewed clocks still agree."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.engine import keys

#: How often a worker says it is up, and how long the word lasts.
REPORT_EVERY_SECONDS = 10.0
FORGET_AFTER_SECONDS = 3600.0


@dataclass(frozen=True)
class SeenWorker:
    hostname: str
    seen_at: float
    queues: list[str]
    pid: int | None


class Workers:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def now(self) -> float:
        seconds, micros = self.redis.time()
        return float(seconds) + micros / 1_000_000

    def report(self, hostname: str, queues: list[str], pid: int) -> None:
        """``hostname`` is up now, consuming ``queues``."""
        now = self.now()
        pipe = self.redis.pipeline()
        pipe.zadd(keys.WORKERS, {hostname: now})
        pipe.hset(keys.WORKERS_INFO, hostname, json.dumps({"queues": queues, "pid": pid}))
        # Workers gone for an hour are forgotten, so the set stays the size of the pool.
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()

    def gone(self, hostname: str) -> None:
        """``hostname`` stopped on purpose (a warm shutdown)."""
        pipe = self.redis.pipeline()
        pipe.zrem(keys.WORKERS, hostname)
        pipe.hdel(keys.WORKERS_INFO, hostname)
        pipe.execute()

    def seen(self, within: float) -> list[SeenWorker]:
        """Workers that reported within the last ``within`` seconds, newest first."""
        now = self.now()
        found = cast(
            "list[tuple[str, float]]",
            self.redis.zrevrangebyscore(keys.WORKERS, "+inf", now - within, withscores=True),
        )
        if not found:
            return []
        infos = self.redis.hmget(keys.WORKERS_INFO, [name for name, _ in found])
        out = []
        for (name, at), raw in zip(found, infos, strict=True):
            info: dict[str, Any] = json.loads(raw) if raw else {}
            out.append(SeenWorker(name, float(at), list(info.get("queues", [])), info.get("pid")))
        return out
