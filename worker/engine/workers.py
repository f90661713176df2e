"""Which workers are up: each one says so every few seconds (worker/presence.py), and
readiness probes, metrics and the recovery sweep read it back. Times are Redis server
time, so hosts with skewed clocks still agree.

A worker is known by its hostname (Celery's node name) and, for what it holds, by the
boot token its process drew when it started: a worker restarted under the same name (the
Procfile's, a container's) is another process, and what the old one held in its hands is
not in the new one's."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.engine import keys

#: How often a worker says it is up, and how long the word lasts.
REPORT_EVERY_SECONDS = 10.0
#: How recently a worker must have reported to count as alive (three reports missed).
ALIVE_SECONDS = 3 * REPORT_EVERY_SECONDS
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

    def report(self, hostname: str, queues: list[str], pid: int, boot: str) -> None:
        """``hostname`` (its process started as ``boot``) is up now, consuming ``queues``;
        with how far its clock is from Redis's (retry deadlines, the recovery sweep and the
        ages of messages read host clocks)."""
        before = time.time()
        now = self.now()
        skew = (before + time.time()) / 2 - now  # within half the round trip
        info = {"queues": queues, "pid": pid, "clock_skew": round(skew, 3)}
        pipe = self.redis.pipeline()
        pipe.zadd(keys.WORKERS, {hostname: now})
        pipe.hset(keys.WORKERS_INFO, hostname, json.dumps(info))
        # Per process too: two processes under one name (a restart, a clash) stay apart.
        pipe.zadd(keys.WORKER_BOOTS, {f"{boot} {hostname}": now})
        # Workers gone for an hour are forgotten, so the sets stay the size of the pool.
        for key in (keys.WORKERS, keys.WORKER_BOOTS):
            pipe.zremrangebyscore(key, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()

    def gone(self, hostname: str, boot: str) -> None:
        """``hostname`` (its process started as ``boot``) stopped on purpose (a warm
        shutdown)."""
        pipe = self.redis.pipeline()
        pipe.zrem(keys.WORKERS, hostname)
        pipe.hdel(keys.WORKERS_INFO, hostname)
        pipe.zrem(keys.WORKER_BOOTS, f"{boot} {hostname}")
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

    def silent_for(self, workers: Sequence[tuple[str, str]]) -> list[float]:
        """For each ``(hostname, boot)``, how long ago that worker process last said it was
        up, in one round trip: infinite when it stopped on purpose or was forgotten (a
        worker restarted under the same name is another process, with its own boot)."""
        if not workers:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for hostname, boot in workers:
            pipe.zscore(keys.WORKER_BOOTS, f"{boot} {hostname}")
        (seconds, micros), *seen = pipe.execute()
        now = float(seconds) + micros / 1_000_000
        return [math.inf if at is None else max(0.0, now - float(at)) for at in seen]
