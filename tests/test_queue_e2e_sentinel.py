"""The queue end to end again, against a Redis that Sentinel manages: a master, two
replicas and three Sentinels on loopback, ``REDIS_URL=redis+sentinel://...``. Every test of
tests/test_queue_e2e.py runs here as written; only the Redis under them changed (the broker
through kombu's Sentinel transport, hardened as ours; job state through redis-py's Sentinel
client). The Sentinels are named by IPv6 addresses (``[::1]:port``) where loopback has one:
every client must find them so (a client that misread the address tries the next
Sentinel, so all are named so)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sandbox.redis_server import RedisUnavailableError
from sandbox.sentinel_cluster import LocalSentinelCluster
from tests.test_queue_e2e import *  # noqa: F403 - the same tests, collected again here


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's Redis: a Sentinel cluster (the suite's own is a single server)."""
    try:
        cluster = LocalSentinelCluster().start()
    except RedisUnavailableError as exc:
        pytest.skip(f"no Sentinel cluster: {exc}")
    try:
        yield _over_ipv6(cluster) if _has_ipv6() else cluster.url
    finally:
        cluster.cleanup()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _over_ipv6(cluster: LocalSentinelCluster) -> str:
    hosts = ",".join(f"[::1]:{s.port}" for s in cluster.sentinels)
    return f"redis+sentinel://{hosts}/{cluster.master_name}/0"


def test_every_client_here_goes_through_the_sentinels(service_env: object) -> None:
    from redis.sentinel import SentinelConnectionPool

    from worker import app
    from worker.broker_transport import SentinelTransport
    from worker.engine.runtime import engine

    with app.connection() as connection:
        assert isinstance(connection.transport, SentinelTransport)
    assert isinstance(engine().redis.connection_pool, SentinelConnectionPool)


def test_config_check_shows_the_master_the_sentinels_name(service_env: object) -> None:
    from click.testing import CliRunner

    from cli.main import main
    from config.settings import get_settings
    from worker.engine.redis_client import sentinel_for

    address = get_settings().redis_address
    host, port = sentinel_for(get_settings()).discover_master(address.master_name)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2
    done = CliRunner().invoke(main, ["config", "check"])
    line = next(li for li in done.output.splitlines() if li.startswith("redis "))
    assert line.startswith(f"redis      ok  {address.shown()} (Redis ")
    assert f"master {host}:{port} as the Sentinels say; 2 replicas)" in line
