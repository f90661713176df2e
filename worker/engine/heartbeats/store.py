"""Heartbeats in Redis: a small sorted set per service, the newest heartbeat of each, the
runs in progress, and a short log of each service's latest pings.

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
from typing import Any, Literal, cast

import redis

from config.catalogue import ServiceSpec
from worker.engine import keys, scripts, stats
from worker.engine.heartbeats.evaluation import ReportedFailure, quoted
from worker.engine.rate_limit import SharedRateLimiter, Slot

HeartbeatStatus = Literal["up", "fail"]
#: What a ping says: alive, failing, a run started, or only a message to keep.
PingKind = Literal["up", "fail", "start", "log"]

#: A heartbeat stamped this far ahead of Redis time is refused (clock skew guard).
MAX_FUTURE_SECONDS = 300.0
#: Each service's log keeps its latest pings, each body cut to ``BODY_LIMIT`` characters,
#: for a week after the last one: bounded however often, and whatever, a service sends.
LOG_KEPT = 50
#: The counter of refused heartbeats, by reason.
REFUSED = "heartbeats_refused"
BODY_LIMIT = 10_000
#: And to this many bytes as the log keeps it, JSON-escaped: a control character is six
#: (``\u0001``), so 10,000 of them made 60 kB an entry, 3 MB a service.
BODY_BYTES = 20_000
LOG_TTL_SECONDS = 7 * 86_400
#: Heartbeats are kept at least this long after the last, however short the window: a
#: job moved from every 5 minutes to daily, its window edited to match, still has its last
#: heartbeat when the new window is read (kept for the old window alone, it expired within
#: minutes and the service paged). The count kept per service bounds what this costs.
HEARTBEATS_KEPT_SECONDS = 8 * 86_400


def _cut(body: str) -> str:
    """``body`` within ``BODY_LIMIT`` characters and ``BODY_BYTES`` bytes as kept, saying
    how much was cut."""
    keep = min(len(body), BODY_LIMIT)
    if _kept_bytes(body[:keep]) > BODY_BYTES:
        low, high = 0, keep  # the longest start that fits: each character costs 1 to 6
        while low < high:
            middle = (low + high + 1) // 2
            if _kept_bytes(body[:middle]) <= BODY_BYTES:
                low = middle
            else:
                high = middle - 1
        keep = low
    if keep == len(body):
        return body
    return body[:keep] + f" … [cut: {len(body) - keep} more]"


def _kept_bytes(text: str) -> int:
    # As the log's JSON holds it: UTF-8, control characters escaped.
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))


class HeartbeatInFutureError(ValueError):
    """``at`` lies further ahead of Redis time than clock skew explains."""


class TooManyPings(Exception):
    """The key's rate window is full: nothing was stored; try again in ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"ping rate reached: retry in {wait:.1f} s")
        self.wait = wait


@dataclass(frozen=True)
class LastHeartbeat:
    at: float
    status: HeartbeatStatus


@dataclass(frozen=True)
class Ping:
    """One ping: its kind, when (None: now), how it arrived (``via``: "UP", "DEGRADED",
    "/fail", "exit 3" ...), the text it carried (cut to ``BODY_LIMIT``) and its run id."""

    kind: PingKind = "up"
    at: float | None = None
    via: str | None = None
    body: str | None = None
    rid: str | None = None


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
        self, spec: ServiceSpec, ping: Ping, rate: tuple[SharedRateLimiter, str] | None = None
    ) -> float:
        """Store one ping for ``spec``; return its time (epoch seconds, Redis clock).

        ``rate`` (a limiter and the key it counts) admits the ping first, in the same round
        trip: over the rate, :class:`TooManyPings` and nothing stored."""
        ttl = max(math.ceil(2 * spec.span) + 60, HEARTBEATS_KEPT_SECONDS)
        body = ping.body or ""
        body = _cut(body)
        pipe = self.redis.pipeline(transaction=False)
        request = rate[0].ask(rate[1], pipe) if rate else None
        self._record(
            keys=[
                keys.heartbeats(spec.slug),
                keys.HEARTBEAT_LAST,
                keys.heartbeat_log(spec.slug),
                keys.heartbeat_runs(spec.slug),
                request.window_key if request else keys.heartbeats(spec.slug),
                keys.STATS,
                keys.HEARTBEAT_FAILED,
            ],
            client=pipe,
            args=[
                spec.slug,
                "" if ping.at is None else repr(float(ping.at)),
                ping.kind,
                kept_per_service(spec),
                MAX_FUTURE_SECONDS,
                secrets.token_hex(4),
                ttl,
                ping.via or "",
                body,
                ping.rid or "",
                LOG_KEPT,
                max(LOG_TTL_SECONDS, ttl, math.ceil(2 * (spec.max_duration or 0))),
                request.member if request else "",
                stats.count("heartbeats", ping.kind)[0],
                quoted(body) if ping.kind == "fail" else "",
            ],
        )
        results = pipe.execute()
        if rate is not None and request is not None:
            slot = rate[0].answer(request, results[0])
            if not isinstance(slot, Slot):
                raise TooManyPings(slot)
        ok, value = results[-1]
        if not int(ok):
            raise HeartbeatInFutureError(
                f"at: {ping.at} is more than {MAX_FUTURE_SECONDS:.0f} s ahead of the "
                f"server's clock ({float(value):.0f}); send the time the heartbeat happened"
            )
        return float(value)

    def log(self, slug: str, count: int = LOG_KEPT) -> list[dict[str, Any]]:
        """The service's latest pings, newest first."""
        raw = cast("list[str]", self.redis.lrange(keys.heartbeat_log(slug), 0, count - 1))
        return [json.loads(entry) for entry in raw]

    def running_since(self, specs: Iterable[ServiceSpec]) -> dict[str, float]:
        """When the oldest unfinished run of each service with a ``max_duration`` began."""
        watched = [spec for spec in specs if spec.max_duration is not None]
        if not watched:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for spec in watched:
            pipe.hvals(keys.heartbeat_runs(spec.slug))
        out = {}
        for spec, starts in zip(watched, pipe.execute(), strict=True):
            if starts:
                out[spec.slug] = min(float(s) for s in starts)
        return out

    def refuse(self, reason: str) -> None:
        """Count a refused heartbeat (the slug itself is not stored: it may be anything)."""
        stats.add(self.redis, [stats.count(REFUSED, reason)])

    def refused(self) -> dict[str, int]:
        """How many heartbeats were refused, by reason."""
        raw = cast(dict[str, str], self.redis.hgetall(keys.STATS))
        prefix = REFUSED + ":"
        return {k[len(prefix) :]: int(float(v)) for k, v in raw.items() if k.startswith(prefix)}

    def last(self) -> dict[str, LastHeartbeat]:
        """The newest heartbeat of every service that ever sent one."""
        return read_last(cast(dict[str, str], self.redis.hgetall(keys.HEARTBEAT_LAST)))

    def unseen_failures(self) -> dict[str, ReportedFailure]:
        """The newest failure of each service that reported one no check has taken in."""
        return read_failures(cast(dict[str, str], self.redis.hgetall(keys.HEARTBEAT_FAILED)))

    def counts(self, specs: Iterable[ServiceSpec], now: float) -> dict[str, int]:
        """ "Up" heartbeats of each service within its window plus grace, ending ``now``."""
        specs = list(specs)
        pipe = self.redis.pipeline(transaction=False)
        for spec in specs:
            pipe.zcount(keys.heartbeats(spec.slug), now - spec.span, "+inf")
        return {spec.slug: int(n) for spec, n in zip(specs, pipe.execute(), strict=True)}


def read_last(raw: dict[str, str]) -> dict[str, LastHeartbeat]:
    """``HEARTBEAT_LAST`` as read (``HGETALL``): the newest heartbeat of each service."""
    out = {}
    for slug, value in raw.items():
        item = json.loads(value)
        out[slug] = LastHeartbeat(at=float(item["at"]), status=item["status"])
    return out


def read_failures(raw: dict[str, str]) -> dict[str, ReportedFailure]:
    """``HEARTBEAT_FAILED`` as read (``HGETALL``): each service's failure not yet taken in."""
    out = {}
    for slug, value in raw.items():
        item = json.loads(value)
        out[slug] = ReportedFailure(
            id=str(item["id"]), at=float(item["at"]), via=item.get("via"), body=item.get("body")
        )
    return out
