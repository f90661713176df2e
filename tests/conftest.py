"""Shared fixtures: a real sandbox over real HTTP, and routing keys."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from sandbox import EmulatorOptions, SandboxServer
from sandbox.smtp_sink import SinkOptions

ROUTING_KEY = "R0UT1NGKEY0000000000000000000001"
OTHER_KEY = "R0UT1NGKEY0000000000000000000002"
SMTP_USER = "gds-mailer"
SMTP_PASSWORD = "s3cret-Pa55word-for-tests"


@pytest.fixture(autouse=True, scope="session")
def own_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's own ``.gds-dev``: a ``make run`` going on in this checkout must not
    lend its settings to the tests, nor see the tests' dev stacks (subprocesses inherit
    the variable)."""
    folder = tmp_path_factory.mktemp("gds-dev")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GDS_DEV_DIR", str(folder))
        yield folder


@pytest.fixture
def routing_key() -> str:
    return ROUTING_KEY


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fresh PagerDuty emulator on a free port, with no rate limit in the way."""
    with SandboxServer(options=EmulatorOptions(rate_limit=0)) as server:
        yield server


class SandboxClient:
    """Reads and steers the sandbox over its HTTP inspection API, as a user would."""

    def __init__(self, server: SandboxServer, verify: ssl.SSLContext | bool = True) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=10, verify=verify)

    def incidents(self, **query: str) -> list[dict[str, Any]]:
        return list(self.http.get("/sandbox/incidents", params=query).json())

    def events(self) -> list[dict[str, Any]]:
        return list(self.http.get("/sandbox/events").json())

    def faults(self, *sequence: dict[str, Any], **plan: Any) -> None:
        answer = self.http.post("/sandbox/faults", json={"sequence": list(sequence), **plan})
        answer.raise_for_status()

    def messages(self, **query: str) -> list[dict[str, Any]]:
        return list(self.http.get("/sandbox/messages", params=query).json())

    def smtp_stats(self) -> dict[str, Any]:
        return dict(self.http.get("/sandbox/smtp").json())

    def smtp_faults(self, *sequence: dict[str, Any], **plan: Any) -> None:
        answer = self.http.post("/sandbox/smtp/faults", json={"sequence": list(sequence), **plan})
        answer.raise_for_status()

    def settings(self, **changes: Any) -> dict[str, Any]:
        answer = self.http.post("/sandbox/settings", json=changes)
        answer.raise_for_status()
        return dict(answer.json())

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def sandbox_api(sandbox: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(sandbox)
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A URL on which nothing listens, for connection-refused tests."""
    return f"http://127.0.0.1:{free_port()}/v2/enqueue"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A private certificate authority for TLS tests (trustme)."""
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def mail_sandbox(ca: trustme.CA) -> Iterator[SandboxServer]:
    """The sandbox with its SMTP sink requiring STARTTLS and AUTH, as a real relay would."""
    sink = SinkOptions(
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        tls_context=server_tls(ca),
        require_starttls=True,
    )
    with SandboxServer(options=EmulatorOptions(rate_limit=0), smtp_port=0, sink=sink) as server:
        yield server


@pytest.fixture
def mail_api(mail_sandbox: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(mail_sandbox)
    yield client
    client.close()


# -- Redis, settings and a real Celery worker ---------------------------------------------

TEAM_KEY = "DBAKEY0000000000000000000000DBA1"


def owned_database() -> int:
    """The database of REDIS_URL this test process owns: GDS_TEST_REDIS_DB (15 unless set)
    for the first (or only) process; in a parallel run (pytest-xdist's ``gw1``, ``gw2``,
    ...) the next ones down from it, passing over the bench smoke test's
    (GDS_BENCH_REDIS_DB, 14) and never reaching 0, where a Redis keeps what nobody placed
    elsewhere (``make run``'s default among it)."""
    base = int(os.environ.get("GDS_TEST_REDIS_DB", "15"))
    bench = int(os.environ.get("GDS_BENCH_REDIS_DB", "14"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw"))
    candidates = [db for db in range(base, 0, -1) if db != bench]
    if index >= len(candidates):
        raise pytest.UsageError(
            f"test process {worker} would own database 0 of REDIS_URL, or none: run fewer"
            " processes (PYTEST_PROCESSES), or unset REDIS_URL to give each its own Redis"
        )
    return candidates[index]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set (each test process owns one of its databases, see
    ``owned_database``, and empties it), else a private redis-server on a free port,
    removed afterwards."""
    import redis as redis_lib

    from sandbox.redis_server import LocalRedis

    given = os.environ.get("REDIS_URL")
    if given:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(given)
        url = urlunsplit((parts.scheme, parts.netloc, f"/{owned_database()}", parts.query, ""))
        client = redis_lib.Redis.from_url(url)
        client.flushdb()
        yield url
        client.flushdb()
        client.close()
        return
    with LocalRedis() as server:
        yield server.url


@pytest.fixture
def mail_and_pages() -> Iterator[SandboxServer]:
    """The sandbox with an open SMTP sink (no TLS, no AUTH) and no PagerDuty rate limit."""
    with SandboxServer(options=EmulatorOptions(rate_limit=0), smtp_port=0) as server:
        yield server


@pytest.fixture
def service_env(
    redis_url: str, mail_and_pages: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Iterator[SandboxServer]:
    """Settings pointing at the sandbox and the test Redis, short retries, clean Redis."""
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": redis_url,
        "PAGERDUTY_API_URL": mail_and_pages.api_url,
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_ROUTING_KEY_DBA": TEAM_KEY,
        "PAGERDUTY_TIMEOUT": "2",
        "PAGERDUTY_RATE_LIMIT": "100000/minute",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mail_and_pages.smtp_port),
        "SMTP_FROM": "GDS <alerts@example.com>",
        "SMTP_STARTTLS": "false",
        "SMTP_TIMEOUT": "2",
        "SMTP_DATA_TIMEOUT": "3",
        "RETRY_BASE_SECONDS": "0.05",
        "RETRY_CAP_SECONDS": "0.5",
        "RETRY_MAX_ATTEMPTS": "5",
        "CELERY_VISIBILITY_TIMEOUT": "60",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from config.settings import load_settings
    from worker.engine.redis_client import connect

    client = connect(load_settings())  # a Sentinel URL too
    client.flushdb()
    reconfigure()
    yield mail_and_pages
    client.flushdb()
    client.close()
    forget_runtime()


def forget_runtime() -> None:
    """Forget this process's settings, so they are read again from the environment, and
    the engine built on them with them. Production reads them once; tests change them."""
    from config.settings import get_settings

    get_settings.cache_clear()


def reconfigure() -> None:
    """Make this process (a producer, and an in-thread worker started afterwards) use the
    settings now in the environment: a fresh engine, and the Celery app's configuration and
    broker connections built again from them."""
    from config.celery_config import celery_config
    from config.settings import get_settings
    from worker import app

    forget_runtime()
    app.conf.update(celery_config(get_settings()))
    # Celery builds its broker connection and producer pools once, from the broker URL of
    # the moment; without this a changed REDIS_URL would keep publishing to the old Redis.
    # (The old pools are left to kombu's registry, not closed: it would hand them out again.)
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def in_thread_worker() -> Any:
    """A real Celery worker (thread pool, 4 threads) in this process, consuming every
    queue, as a context manager; start it after the settings it should use."""
    from celery.contrib.testing.worker import start_worker

    from worker import app

    return start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
    )


@pytest.fixture
def celery_worker(service_env: SandboxServer) -> Iterator[Any]:
    """A real Celery worker (thread pool) in this process, consuming every queue."""
    with in_thread_worker() as worker:
        yield worker


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    import time

    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


#: Why a page died, in the words the worker writes: for tests that choose letters by reason.
OUTAGE = "PagerDuty answered HTTP 503 (retries exhausted)"
BAD_KEY = "permanent error: PagerDuty rejected event: Invalid routing key"


def dead_pages(*letters: tuple[str, str]) -> None:
    """Keep a dead page letter for each (id, reason), its job named as the letter."""
    from worker.engine.runtime import engine

    page = {"action": "trigger", "notification": {"recipient": "db", "subject": "Disk full"}}
    for name, reason in letters:
        engine().dead_letters.add(
            entry_id=name, job_id=name, channel="pagerduty", reason=reason, payload=page
        )


@pytest.fixture
def catalogue(
    service_env: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Path]:
    """Point HEARTBEAT_SERVICES_FILE at a file the test writes (and may rewrite)."""
    path = tmp_path / "services.toml"
    path.write_text("")
    monkeypatch.setenv("HEARTBEAT_SERVICES_FILE", str(path))
    monkeypatch.setenv("HEARTBEAT_CHECK_INTERVAL", "0.2")
    reconfigure()
    stamp = [time.time()]

    def write(text: str) -> Path:
        path.write_text(text)
        stamp[0] += 10  # a distinct mtime, however fast the rewrite
        os.utime(path, (stamp[0], stamp[0]))
        return path

    return write


@pytest.fixture
def api_server(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The HTTP API on a free port, with a token per scope (tests/api_server.py)."""
    from tests.api_server import serve

    yield from serve(monkeypatch)
