"""Idempotency: the first job to claim an idempotency id within the TTL wins; every later
copy is told the first job's id and dropped."""

from __future__ import annotations

import redis

from worker.engine import keys, scripts


class Idempotency:
    """Idempotency ids in Redis, each naming the job that claimed it, for ``ttl`` seconds."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl
        self._claim = scripts.register(client, __file__, "idempotency_claim")
        # An id is given up only by the job that holds it: the same compare-and-delete
        # that releases a lock.
        self._release = scripts.register(client, __file__, "compare_and_delete")

    def claim(self, idempotency_id: str, job_id: str) -> str | None:
        """Claim ``idempotency_id`` for ``job_id``: None when this job is the first, else
        the id of the job that claimed it first. Atomic, one round trip."""
        first = self._claim(keys=[keys.idempotency(idempotency_id)], args=[job_id, self.ttl])
        return None if first is None else str(first)

    def release(self, idempotency_id: str, job_id: str) -> None:
        """Give the id up if ``job_id`` still holds it (the job was not accepted after all,
        so the producer's retry must not be called a duplicate)."""
        self._release(keys=[keys.idempotency(idempotency_id)], args=[job_id])

    def reassign(self, idempotency_id: str, job_id: str) -> None:
        """Point the id at ``job_id`` (a replay of a dead-lettered job takes its place)."""
        self.redis.set(keys.idempotency(idempotency_id), job_id, ex=self.ttl)
