"""The Redis client for job state (not the broker: Celery has its own connections)."""

from __future__ import annotations

import redis


def connect(url: str) -> redis.Redis:
    """A thread-safe client (a connection pool) on ``url``, answering ``str``."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        socket_keepalive=True,
        retry_on_timeout=True,
    )
