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

Routing keys never reach Redis: the limiter is keyed by a short hash of the key. The HTTP
API limits each token's requests with the same windows, in a namespace of their own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from limits import parse
from redis.client import Pipeline
from redis.commands.core import Script

from worker.engine import keys, scripts


def key_id(routing_key: str) -> str:
    """How a key is named in Redis: a hash, never the key itself."""
    return keys.digest(routing_key, 16)


class Slot:
    """A reserved place in a key's window; :meth:`arrived` re-stamps it."""

    def __init__(self, window_key: str, member: str, restamp: Script, client: redis.Redis) -> None:
        self.window_key = window_key
        self.member = member
        self._restamp = restamp
        self._redis = client

    def arrived(self, client: redis.Redis | Pipeline | None = None) -> None:
        """PagerDuty has answered: count the event from now, as PagerDuty does. Through
        ``client`` when given: a pipeline carries it in a round trip made anyway."""
        self._restamp(keys=[self.window_key], args=[self.member], client=client)

    def give_back(self) -> None:
        """Nothing was sent after all: free the place for another event."""
        self._redis.zrem(self.window_key, self.member)


@dataclass(frozen=True)
class SlotRequest:
    window_key: str
    member: str
    pending: Any  # the answer, or the pipeline it waits in


class SharedRateLimiter:
    """Admission control per key (a routing key, an API token), shared through Redis by
    every process. ``namespace`` keeps one kind of key's windows apart from another's."""

    def __init__(self, client: redis.Redis, rate: str, namespace: str) -> None:
        self.redis = client
        self.namespace = namespace
        self._acquire = scripts.register(client, __file__, "rate_limit_acquire")
        self._restamp = scripts.register(client, __file__, "rate_limit_restamp")
        self._pause = scripts.register(client, __file__, "rate_limit_pause")
        item = parse(rate)
        self.limit = int(item.amount)
        self.window = float(item.get_expiry())
        # A little past the window, so the re-stamped slot is surely free at PagerDuty too.
        self.margin = min(0.25, max(0.01, 0.01 * self.window))

    def acquire(self, key: str) -> Slot | float:
        """Reserve a slot for one event (a :class:`Slot`), or return the seconds to wait
        (the key is paused after a 429, or the window is full) without reserving."""
        request = self.ask(key, self.redis)
        return self.answer(request, request.pending)

    def ask(self, key: str, client: redis.Redis | Pipeline) -> SlotRequest:
        """Ask for a slot through ``client``: the Redis client (answered at once), or a
        pipeline (answered when it runs, by :meth:`answer` with its result there). A
        script later in the same pipeline can tell whether the slot was granted: the
        request's member is then in its window."""
        kid = key_id(key)
        window_key = keys.rate_window(self.namespace, kid)
        member = uuid.uuid4().hex
        pending = self._acquire(
            keys=[window_key, keys.rate_pause(self.namespace, kid)],
            args=[self.window, self.limit, member, repr(time.time())],
            client=client,
        )
        return SlotRequest(window_key, member, pending)

    def answer(self, request: SlotRequest, result: Any) -> Slot | float:
        """The slot ``request`` got (``result`` is its script's answer), or the seconds to
        wait before asking again."""
        if int(result[0]) == 1:
            return Slot(request.window_key, request.member, self._restamp, self.redis)
        if int(result[0]) == 2:
            return float(result[1])  # paused after a 429: exactly the rest of the pause
        return max(0.001, float(result[1])) + self.margin

    def pause(
        self, key: str, seconds: float | None, backoff: float = 1.0, longest: float = 30.0
    ) -> float:
        """Stop every worker from sending to this key (after a 429) for ``seconds``, or,
        when PagerDuty named no wait, for ``backoff`` seconds doubled with each further 429
        that comes while they keep coming, up to ``longest`` (or ``backoff``, if longer:
        PagerDuty asks for a backoff, and a pause of a second each time would keep the key
        throttled); a 429 during a pause (sent before it began) adds nothing. Returns the
        pause."""
        kid = key_id(key)
        answer = self._pause(
            keys=[keys.rate_pause(self.namespace, kid), keys.rate_strikes(self.namespace, kid)],
            args=[
                "" if seconds is None else repr(seconds),
                repr(time.time()),
                backoff,
                max(longest, backoff),
            ],
        )
        return float(answer)
