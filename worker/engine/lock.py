"""The one lock primitive: a key in Redis held by a random token for a bounded time.

Taken with ``SET key token NX PX ttl``, released with a compare-and-delete script, so a
holder whose lock expired and was taken by another can never release the other's. It
guards a delivery (the claim: two copies of a message never deliver at once), the
heartbeat checker and the recovery sweep (one at a time across the pool).

This is redis-py's ``Lock`` protocol; redis-py's class is not used because a delivery
claim must be taken inside the same script that reads the delivery's state (one round
trip per page, see ``jobs_claim.lua``), and recorded deliveries release it inside their
own script. :meth:`Locks.adopt` wraps a lock such a script took.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from redis.commands.core import Script

from worker.engine import scripts


@dataclass
class Lock:
    """A lock this process holds (until :meth:`release`, or its time runs out)."""

    key: str
    token: str
    _release: Script = field(repr=False)
    released: bool = False

    def release(self) -> bool:
        """Give the lock up; False when it was no longer ours (it expired). Idempotent."""
        if self.released:
            return False
        self.released = True
        return bool(self._release(keys=[self.key], args=[self.token]))


class Locks:
    """Takes and releases locks on one Redis client (the release script registered once)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._release = scripts.register(client, __file__, "compare_and_delete")

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    def acquire(self, key: str, ttl: float) -> Lock | None:
        """The lock on ``key`` for ``ttl`` seconds, or None when someone else holds it."""
        token = self.new_token()
        if self.redis.set(key, token, nx=True, px=max(1, int(ttl * 1000))):
            return self.adopt(key, token)
        return None

    def adopt(self, key: str, token: str) -> Lock:
        """A lock that a script took on ``key`` with ``token``, to release like any other."""
        return Lock(key, token, self._release)

    @contextlib.contextmanager
    def held(self, key: str, ttl: float) -> Iterator[Lock | None]:
        """``with locks.held(key, ttl) as lock:`` — None when another holder has it; released
        on the way out however the block ends."""
        lock = self.acquire(key, ttl)
        try:
            yield lock
        finally:
            if lock is not None:
                lock.release()

    def remaining(self, key: str) -> float:
        """Seconds before the lock on ``key`` runs out (0 when nobody holds it)."""
        return max(0.0, int(self.redis.pttl(key)) / 1000)
