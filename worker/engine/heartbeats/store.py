"""Heartbeats in Redis: a small sorted set per service, and the newest heartbeat of each.

Each service keeps only its most recent ``max(2 * threshold, 32)`` "up" heartbeats (enough
to decide "at least ``threshold`` within the window" exactly) in a set that expires once it
could no longer count, so memory stays bounded however often, or however long ago, a
service reported. Counting over a window is one ``ZCOUNT``; a check over thousands of
services is one pipelined round trip.

Times are Redis server time (``TIME``), so producers and checkers on different hosts agree
on "now" even when their clocks do not.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

import redis

from config.catalogue import ServiceSpec
from worker.engine import keys, scripts

HeartbeatStatus = Literal["up", "fail"]

#: A heartbeat stamped this far ahead of Redis time is refused (clock skew guard).
MAX_FUTURE_SECONDS = 300.0


class HeartbeatInFutureError(ValueError):
    """``at`` lies further ahead of Redis time than clock skew explains."""


@dataclass(frozen=True)
class LastHeartbeat:
    at: float
    status: HeartbeatStatus


def kept_per_service(spec: ServiceSpec) -> int:
    return max(2 * spec.threshold, 32)


class HeartbeatStore:
    """Record heartbeats and read what a check needs."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._record = scripts.register(client, __file__, "store_record")

    def now(self) -> float:
        seconds, micros = self.redis.time()
        return float(seconds) + micros / 1_000_000

    def record(
        self, spec: ServiceSpec, status: HeartbeatStatus = "up", at: float | None = None
    ) -> float:
        """Store one heartbeat for ``spec`` at ``at`` (default: Redis time); return its time."""
        ttl = math.ceil(2 * spec.span) + 60
        ok, value = self._record(
            keys=[keys.heartbeats(spec.slug), keys.HEARTBEAT_LAST],
            args=[
                spec.slug,
                "" if at is None else repr(float(at)),
                status,
                kept_per_service(spec),
                MAX_FUTURE_SECONDS,
                secrets.token_hex(4),
                ttl,
            ],
        )
        if not int(ok):
            raise HeartbeatInFutureError(
                f"at: {at} is more than {MAX_FUTURE_SECONDS:.0f} s ahead of the server's "
                f"clock ({float(value):.0f}); send the time the heartbeat happened"
            )
        return float(value)

    def refuse(self, reason: str) -> None:
        """Count a refused heartbeat (the slug itself is not stored: it may be anything)."""
        self.redis.hincrby(keys.HEARTBEAT_REFUSED, reason, 1)

    def refused(self) -> dict[str, int]:
        raw = cast(dict[str, str], self.redis.hgetall(keys.HEARTBEAT_REFUSED))
        return {k: int(v) for k, v in raw.items()}

    def last(self) -> dict[str, LastHeartbeat]:
        """The newest heartbeat of every service that ever sent one."""
        out = {}
        for slug, raw in cast(dict[str, str], self.redis.hgetall(keys.HEARTBEAT_LAST)).items():
            item = json.loads(raw)
            out[slug] = LastHeartbeat(at=float(item["at"]), status=item["status"])
        return out

    def counts(self, specs: Iterable[ServiceSpec], now: float) -> dict[str, int]:
        """ "Up" heartbeats of each service within its window plus grace, ending ``now``."""
        specs = list(specs)
        pipe = self.redis.pipeline(transaction=False)
        for spec in specs:
            pipe.zcount(keys.heartbeats(spec.slug), now - spec.span, "+inf")
        return {spec.slug: int(n) for spec, n in zip(specs, pipe.execute(), strict=True)}
