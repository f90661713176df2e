"""``unix://``: the whole service over a Redis reached through its socket file alone (with
a password and a database other than 0): the broker (kombu knows it as ``redis+socket://``),
job records, the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from click.testing import CliRunner

import tasks
from cli.main import main
from sandbox import SandboxServer
from sandbox.redis_server import LocalRedis, RedisUnavailableError
from tests.conftest import SandboxClient, wait_for
from worker.engine.runtime import engine
from worker.providers.base import Notification

PASSWORD = "s3cret/with?odd#chars"


@pytest.fixture(scope="module")
def socket_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A redis-server with a password and a socket file; yields the socket's path."""
    socket = tmp_path_factory.mktemp("socket-redis") / "redis.sock"
    listen = ["--unixsocket", str(socket), "--unixsocketperm", "700"]
    try:
        server = LocalRedis(extra=[*listen, "--requirepass", PASSWORD]).start()
    except RedisUnavailableError as exc:
        pytest.skip(f"no redis-server to start: {exc}")
    try:
        yield socket
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(socket_redis: Path) -> str:
    """Overrides conftest's: every fixture here (service_env, celery_worker) uses the socket."""
    from urllib.parse import quote

    return f"unix://:{quote(PASSWORD, safe='')}@{socket_redis}?db=3"


def test_the_service_runs_over_a_unix_socket(
    celery_worker: Any, service_env: SandboxServer, redis_url: str, socket_redis: Path
) -> None:
    from worker import app

    assert app.conf.broker_url.startswith("redis+socket://")
    api = SandboxClient(service_env)
    page = tasks.enqueue(
        Notification(recipient="db-1", subject="Disk full", priority="critical"), team="dba"
    )
    mail = tasks.enqueue(Notification(recipient="ops@example.com", subject="Report"))
    for job in (page, mail):
        wait_for(lambda job=job: (engine().jobs.get(job) or {}).get("status") == "delivered")
    assert len(api.incidents()) == 1
    assert len(api.messages()) == 1
    api.close()
    # In the database the URL names, and only there.
    raw = redis_lib.Redis(unix_socket_path=str(socket_redis), password=PASSWORD, db=3)
    assert raw.exists(f"gds:job:{page}")
    assert not redis_lib.Redis(unix_socket_path=str(socket_redis), password=PASSWORD).dbsize()
    raw.close()
    status = CliRunner().invoke(main, ["status", page])
    assert status.exit_code == 0, status.output
    assert "delivered" in status.output
    check = CliRunner().invoke(main, ["config", "check"])
    assert f"redis      ok  unix://…@{socket_redis}" in check.output, check.output
