"""The process-wide Redis client for job state (not the broker: Celery has its own)."""

from __future__ import annotations

import threading

import redis

from config.settings import get_settings

_lock = threading.Lock()
_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """A thread-safe client (connection pool) on ``REDIS_URL``, created on first use."""
    global _client
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(
                get_settings().redis_url,
                decode_responses=True,
                health_check_interval=10,
                socket_keepalive=True,
                retry_on_timeout=True,
            )
        return _client


def reset_redis() -> None:
    """Forget the client (settings changed, or after fork)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
