"""The one lock primitive (worker/engine/lock.py), against a real Redis: a holder whose
lock expired can never release the next holder's, and ``held`` always lets go. The
delivery claim, the heartbeat checker and the recovery sweep all take this lock."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from worker.engine import keys
from worker.engine.lock import Locks


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def test_a_lock_is_exclusive_until_released(client: redis.Redis) -> None:
    locks = Locks(client)
    first = locks.acquire("gds:test:lock", ttl=5)
    assert first is not None
    assert locks.acquire("gds:test:lock", ttl=5) is None
    assert 4 < locks.remaining("gds:test:lock") <= 5
    assert first.release()
    assert not first.release()  # idempotent
    assert locks.remaining("gds:test:lock") == 0
    assert locks.acquire("gds:test:lock", ttl=5) is not None


def test_an_expired_holder_cannot_release_the_next_holders_lock(client: redis.Redis) -> None:
    """What a GET-then-DEL release got wrong: the key it read may be another's by the DEL."""
    locks = Locks(client)
    stale = locks.acquire("gds:test:lock", ttl=0.05)
    assert stale is not None
    time.sleep(0.1)
    current = locks.acquire("gds:test:lock", ttl=5)
    assert current is not None
    assert not stale.release()
    assert client.get("gds:test:lock") == current.token
    assert current.release()


def test_held_skips_when_taken_and_releases_however_the_block_ends(client: redis.Redis) -> None:
    locks = Locks(client)
    with locks.held(keys.RECOVERY_LOCK, ttl=5) as lock:
        assert lock is not None
        with locks.held(keys.RECOVERY_LOCK, ttl=5) as second:
            assert second is None  # another sweeper holds it: skip this turn
    assert not client.exists(keys.RECOVERY_LOCK)
    with pytest.raises(RuntimeError), locks.held(keys.RECOVERY_LOCK, ttl=5):
        raise RuntimeError("the sweep failed half way")
    assert not client.exists(keys.RECOVERY_LOCK)
