"""Idempotency: the first job to claim an idempotency id within the TTL wins; every later
copy is told the first job's id and dropped."""

from __future__ import annotations

import redis

from config.settings import get_settings
from worker import keys
from worker.redis_store import get_redis


def claim(idempotency_id: str, job_id: str, client: redis.Redis | None = None) -> str | None:
    """Claim ``idempotency_id`` for ``job_id``: None when this job is the first, else the id
    of the job that claimed it first (atomic: SET NX)."""
    r = client or get_redis()
    key = keys.idempotency(idempotency_id)
    ttl = get_settings().idempotency_ttl_seconds
    if r.set(key, job_id, nx=True, ex=ttl):
        return None
    first = r.get(key)
    if first is None:  # expired between SET and GET: claim it now
        return claim(idempotency_id, job_id, client)
    return str(first)


def reassign(idempotency_id: str, job_id: str, client: redis.Redis | None = None) -> None:
    """Point the id at ``job_id`` (a replay of a dead-lettered job takes its place)."""
    r = client or get_redis()
    r.set(keys.idempotency(idempotency_id), job_id, ex=get_settings().idempotency_ttl_seconds)
