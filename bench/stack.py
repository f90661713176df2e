"""The processes a benchmark runs against, each on a free port, all torn down at the end:
a private Redis (:class:`sandbox.redis_server.LocalRedis`, or a given URL's database), the
sandbox as processes of its own (``gds-notify sandbox``: one for PagerDuty, one for
SMTP), and worker pools started from the
Procfile's command lines with the environment the dev stack gives its children.

The sandbox runs in its own process, not on a thread of the harness, so the times it
stamps on what it receives are not delayed by the harness's own work (the GIL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import redis

from bench.measure import BenchError
from bench.procfile import ROOT, PoolSpec
from cli.dev_stack import DevStack, Service, wait_ready
from config.settings import get_settings
from sandbox.redis_server import LocalRedis, free_port

#: A PagerDuty limit no benchmark reaches: the limiter still runs, it never waits.
UNLIMITED_RATE = "1000000/minute"
START_TIMEOUT = 90.0
STOP_GRACE = 15.0


class BenchStack:
    """Redis, the sandbox and (on demand) worker pools, configured to talk to each other.

    The harness process gets the same settings as the workers, so ``tasks.enqueue`` in
    the harness is what a Python producer runs.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        log: Callable[[str], None] = print,
        workdir: Path | None = None,
    ) -> None:
        self.given_redis_url = redis_url
        self.log = log
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gds-bench-"))
        self.logs = self.workdir / "logs"
        self.local_redis: LocalRedis | None = None
        self.redis_url = ""
        self.sandbox: Service | None = None
        self.mail_sandbox: Service | None = None
        self.sandbox_url = ""
        self.mail_sandbox_url = ""
        self.smtp_port = 0
        self.env: dict[str, str] = {}
        self._pools: list[Service] = []
        self._pools_key: object = None
        self._saved_env: dict[str, str | None] = {}
        #: Every child process started, so a caller can check none outlived the stack.
        self.started_pids: list[int] = []

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> Self:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_url = self._start_redis()
        port, mail_port, self.smtp_port = free_port(), free_port(), free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        self.mail_sandbox_url = f"http://127.0.0.1:{mail_port}"
        # The dev stack's own idea of what its children need; the limit is set per run.
        dev = DevStack(host="127.0.0.1", port=port, smtp_port=self.smtp_port)
        self.env = dev.child_env(self.redis_url)
        self.env.pop("HEARTBEAT_SERVICES_FILE", None)
        self.env["PAGERDUTY_RATE_LIMIT"] = UNLIMITED_RATE
        self.env["PYTHONUNBUFFERED"] = "1"
        # PagerDuty and the mail relay are two services in real life: two sandbox
        # processes here, so a busy SMTP sink cannot delay the emulator's event loop (and
        # with it the receipt times pages are measured by). The first one's SMTP port is
        # never used; the second one's web port only answers the harness's questions.
        self.sandbox = self._sandbox("sandbox", port, free_port())
        self.mail_sandbox = self._sandbox("mail-sandbox", mail_port, self.smtp_port)
        self._wait_ready([self.sandbox, self.mail_sandbox])
        self._configure_harness(self.env)
        return self

    def _sandbox(self, name: str, port: int, smtp_port: int) -> Service:
        service = Service(
            name,
            [
                sys.executable,
                "-m",
                "cli.main",
                "sandbox",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--smtp-port",
                str(smtp_port),
                "--rate-limit",
                "0",
            ],
            f"http://127.0.0.1:{port}/healthz",
            self.logs / f"{name}.log",
        )
        service.start(self.child_env(), ROOT)
        self._started(service)
        return service

    def _start_redis(self) -> str:
        if self.given_redis_url:
            client = redis.Redis.from_url(self.given_redis_url)
            try:
                client.ping()
                client.flushdb()  # a dedicated database: the caller said so
            finally:
                client.close()
            return self.given_redis_url
        self.local_redis = LocalRedis().start()
        return self.local_redis.url

    def child_env(self, overrides: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a child: ours, minus anything that would point it elsewhere."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SMTP_", "PAGERDUTY_", "HEARTBEAT_", "ROUTING_", "RETRY_"))
        }
        env.update(self.env)
        env.update(overrides or {})
        return env

    def _configure_harness(self, env: dict[str, str]) -> None:
        # The harness is a producer like any other: it reads its settings once, on first
        # use, so they must be in the environment before anything reads them.
        if get_settings.cache_info().currsize:
            raise BenchError("the harness read its settings before the stack was up")
        for name, value in env.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def stop(self) -> None:
        """Stop every process this stack started and remove its files."""
        self.stop_pools()
        _stop([s for s in (self.sandbox, self.mail_sandbox) if s is not None])
        self.sandbox = self.mail_sandbox = None
        if self.local_redis is not None:
            self.local_redis.cleanup()
            self.local_redis = None
        elif self.given_redis_url:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(self.given_redis_url)
                client.flushdb()
                client.close()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- worker pools -------------------------------------------------------------------

    def pools(
        self, specs: Iterable[tuple[str, PoolSpec]], env: dict[str, str] | None = None
    ) -> list[Service]:
        """Worker processes, one per ``(instance name, spec)``, running with ``env`` on top
        of the stack's environment. The same request again reuses the running pools;
        anything else stops them first (settings are read when a worker starts)."""
        specs = list(specs)
        key = (tuple((n, s.args) for n, s in specs), tuple(sorted((env or {}).items())))
        if key == self._pools_key and all(p.exited() is None for p in self._pools):
            return self._pools
        self.stop_pools()
        child_env = self.child_env(env)
        services = [
            Service(name, spec.argv(name), "ready.", self.logs / f"{name}.log")
            for name, spec in specs
        ]
        for service in services:
            service.log.write_bytes(b"")
            service.start(child_env, ROOT)
            self._started(service)
        self._pools = services
        self._wait_ready(services)
        self._pools_key = key
        return services

    def _started(self, service: Service) -> None:
        if service.proc is not None:
            self.started_pids.append(service.proc.pid)

    def stop_pools(self) -> None:
        _stop(self._pools)
        self._pools, self._pools_key = [], None

    @property
    def harness_pid(self) -> int:
        """This process: the producer of every scenario."""
        return os.getpid()

    def redis(self) -> redis.Redis:
        """A new client on the stack's Redis (strings decoded)."""
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def redis_version(self) -> str:
        client = self.redis()
        try:
            return str(client.info("server").get("redis_version", "unknown"))
        finally:
            client.close()

    @property
    def redis_description(self) -> str:
        parts = urlsplit(self.redis_url)
        where = "given REDIS_URL" if self.given_redis_url else "private redis-server"
        return f"{where}, database {parts.path.lstrip('/') or '0'}"

    def _wait_ready(self, services: list[Service]) -> None:
        wait_ready(services, START_TIMEOUT, hint=f" (logs in {self.logs})")


def _stop(services: list[Service]) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL whatever is still there after the grace."""
    for service in services:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for service in services:
        if not service.wait(max(0.1, deadline - time.monotonic())):
            service.signal(signal.SIGKILL)
            service.wait(5)
        service.close()
