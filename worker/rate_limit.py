"""The PagerDuty rate limit, shared by every worker through Redis, per routing key.

PagerDuty allows about 120 events a minute per integration key over a sliding window.
Every worker asks this limiter before sending, so the whole pool stays under the limit
together, and a worker that would exceed it learns how long to wait instead of collecting
429s. When PagerDuty answers 429 anyway, the key is paused for every worker until the wait
PagerDuty asked for (or our backoff) is over.

The window is a sorted set per key, kept by two small Lua scripts on Redis's own clock (so
workers on different hosts agree). A slot is reserved when a worker is about to send and
re-stamped when PagerDuty's answer arrives: PagerDuty counts an event when it *arrives*,
which is later than when we decided to send, and counting from our side alone lets
network jitter look like a burst to them. The rate is written as the ``limits`` library
reads it ("120/minute", "10/second").

Routing keys never reach Redis: the limiter is keyed by a short hash of the key.
"""

from __future__ import annotations

import threading
import time
import uuid

from limits import parse

from config.settings import get_settings
from worker import keys
from worker.redis_store import get_redis

# KEYS[1] window, KEYS[2] the key's pause; ARGV: window seconds, limit, member, the
# caller's time. Returns {1}, {0, wait for the window} or {2, rest of the pause}. The
# pause is checked here, in the same round trip, against the caller's clock (the clock
# that wrote it, in pause()).
_ACQUIRE = """
local paused = redis.call('GET', KEYS[2])
if paused and tonumber(paused) > tonumber(ARGV[4]) then
  return {2, tostring(tonumber(paused) - tonumber(ARGV[4]))}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 5000)
  return {1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tostring(tonumber(oldest[2]) + window - now)}
"""

# KEYS[1] window; ARGV[1] member: move the member's time to now (never backwards).
_RESTAMP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return redis.call('ZADD', KEYS[1], 'XX', 'GT', now, ARGV[1])
"""

_PAUSE = """
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


def key_id(routing_key: str) -> str:
    """How a routing key is named in Redis: a hash, never the key."""
    return keys.digest(routing_key, 16)


class Slot:
    """A reserved place in a key's window; :meth:`arrived` re-stamps it."""

    def __init__(self, window_key: str, member: str) -> None:
        self.window_key = window_key
        self.member = member

    def arrived(self) -> None:
        """PagerDuty has answered: count the event from now, as PagerDuty does."""
        get_redis().eval(_RESTAMP, 1, self.window_key, self.member)


class SharedRateLimiter:
    """Admission control for PagerDuty events, per routing key, across the worker pool."""

    def __init__(self, rate: str) -> None:
        item = parse(rate)
        self.limit = int(item.amount)
        self.window = float(item.get_expiry())
        # A little past the window, so the re-stamped slot is surely free at PagerDuty too.
        self.margin = min(0.25, max(0.01, 0.01 * self.window))

    def acquire(self, routing_key: str) -> Slot | float:
        """Reserve a slot for one event (a :class:`Slot`), or return the seconds to wait
        (the key is paused after a 429, or the window is full) without reserving."""
        kid = key_id(routing_key)
        window_key = f"{keys.RATE_LIMIT_NAMESPACE}:{kid}"
        member = uuid.uuid4().hex
        # One round trip: a page pays for every one of them in latency.
        answer = get_redis().eval(
            _ACQUIRE,
            2,
            window_key,
            keys.pagerduty_pause(kid),
            self.window,
            self.limit,
            member,
            repr(time.time()),
        )
        if int(answer[0]) == 1:
            return Slot(window_key, member)
        if int(answer[0]) == 2:
            return float(answer[1])  # paused after a 429: exactly the rest of the pause
        return max(0.001, float(answer[1])) + self.margin

    def paused_for(self, kid: str) -> float:
        until = get_redis().get(keys.pagerduty_pause(kid))
        return max(0.0, float(until) - time.time()) if until else 0.0

    def pause(self, routing_key: str, seconds: float) -> None:
        """Stop every worker from sending to this key for ``seconds`` (after a 429)."""
        seconds = max(0.05, seconds)
        until = time.time() + seconds
        get_redis().eval(
            _PAUSE,
            1,
            keys.pagerduty_pause(key_id(routing_key)),
            repr(until),
            int(seconds * 1000) + 1,
        )


_lock = threading.Lock()
_shared: SharedRateLimiter | None = None


def shared_limiter() -> SharedRateLimiter:
    global _shared
    with _lock:
        if _shared is None:
            settings = get_settings()
            _shared = SharedRateLimiter(settings.pagerduty_rate_limit)
        return _shared


def reset_limiter() -> None:
    global _shared
    with _lock:
        _shared = None
