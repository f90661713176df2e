"""``rediss://``: the whole service over a Redis that only speaks TLS (a real redis-server
with trustme certificates): the broker (kombu), job records, idempotency ids, dead letters
and the CLI, and both clients refuse a server whose certificate they cannot verify."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis as redis_lib
import trustme
from click.testing import CliRunner

import tasks
from cli.main import main
from sandbox import SandboxServer
from sandbox.redis_server import free_port, redis_server_binary
from tests.conftest import SandboxClient, wait_for
from worker.engine.runtime import engine
from worker.providers.base import Notification

pytestmark = pytest.mark.slow


def _tls_url(port: int, ca_file: Path | None) -> str:
    query = f"?ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca_file))}" if ca_file else ""
    return f"rediss://127.0.0.1:{port}/0{query}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server listening with TLS only; yields its port and the CA file to trust."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary to start a TLS Redis")
    directory = tmp_path_factory.mktemp("tls-redis")
    ca = trustme.CA()  # its own CA: the session's CA is not trusted by default either
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
            "--tls-ca-cert-file",
            str(ca_file),
            "--tls-auth-clients",
            "no",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = redis_lib.Redis.from_url(_tls_url(port, ca_file), socket_connect_timeout=1)

    def up() -> bool:
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            pytest.skip(f"this redis-server cannot serve TLS: {output.strip()[-300:]}")
        try:
            return bool(client.ping())
        except redis_lib.ConnectionError:
            return False

    try:
        wait_for(up, timeout=15)
        yield port, ca_file
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def redis_url(tls_redis: tuple[int, Path]) -> str:
    """Overrides conftest's: every fixture here (service_env, celery_worker) uses TLS."""
    port, ca_file = tls_redis
    return _tls_url(port, ca_file)


def test_the_service_runs_over_rediss(
    celery_worker: Any, service_env: SandboxServer, redis_url: str
) -> None:
    from config.settings import get_settings
    from worker import app

    assert get_settings().redis_url.startswith("rediss://")
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    api = SandboxClient(service_env)
    page = tasks.enqueue(
        Notification(recipient="db-1", subject="Disk full", priority="critical"),
        team="dba",
    )
    mail = tasks.enqueue(
        Notification(recipient="ops@example.com", subject="Report", idempotency_id="tls-1")
    )
    assert (
        tasks.enqueue(
            Notification(recipient="ops@example.com", subject="Report", idempotency_id="tls-1")
        )
        == mail
    )  # idempotency over TLS
    for job in (page, mail):
        wait_for(lambda job=job: (engine().jobs.get(job) or {}).get("status") == "delivered")
    assert len(api.incidents()) == 1
    assert len(api.messages()) == 1
    refused = app.send_task("notify", args=[{"recipient": "", "subject": "x"}])
    wait_for(lambda: engine().dead_letters.get(refused.id))
    api.close()

    runner = CliRunner()
    status = runner.invoke(main, ["status", page])
    assert status.exit_code == 0, status.output
    assert "delivered" in status.output
    letters = runner.invoke(main, ["dlq", "list"])
    assert refused.id in letters.output
    check = runner.invoke(main, ["config", "check"])
    assert "redis      ok  rediss://127.0.0.1" in check.output, check.output


def test_an_unverifiable_certificate_is_refused_by_broker_and_state_store(
    tls_redis: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.exceptions import OperationalError

    from config.settings import get_settings
    from tests.conftest import reconfigure
    from worker import app
    from worker.engine.runtime import engine

    port, _ = tls_redis
    # rediss:// with no CA named: the system's CAs, which do not include the test CA.
    monkeypatch.setenv("REDIS_URL", _tls_url(port, None))
    get_settings.cache_clear()
    try:
        reconfigure()
        with pytest.raises(redis_lib.ConnectionError, match="certificate verify failed"):
            engine().redis.ping()
        with (
            app.connection_for_write() as conn,
            pytest.raises((OperationalError, redis_lib.ConnectionError)) as caught,
        ):
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        assert "certificate verify failed" in str(caught.value)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reconfigure()
