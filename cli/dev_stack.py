"""The local dev stack behind ``gds-notify dev`` and ``make run``: Redis, a worker serving
every queue (pages first), beat, Flower, the HTTP API and the sandbox, configured to talk
to each other. The API gets a development token (admin scope) made for this run only.

With ``--ha`` Redis is a private Sentinel cluster (a master, two replicas, three
Sentinels) and the stack runs with ``REDIS_MIN_REPLICAS=1``: kill the master and watch
the failover.

Every process runs in its own session, so Ctrl-C (or a closed terminal) reaches only
``gds-notify dev``, which then stops them in reverse order (SIGTERM, then SIGKILL after a
grace period) and removes what it created — whether or not it can still print (its output
may go through a pipe whose reader died with the same Ctrl-C). Should ``gds-notify dev``
itself be killed outright, its children get SIGTERM from the kernel (Linux's parent-death
signal). Pages go to the sandbox only: the stack never talks to real PagerDuty.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import redis
from dotenv import dotenv_values

from cli.common import port_is_free
from config.api_tokens import new_token, token_hash
from config.catalogue import load_catalogue
from config.dev_stack_file import (
    INTAKE_SETTINGS,
    dev_dir,
    remove_stack,
    running_stack,
    write_stack,
)
from config.settings import TEAM_KEY_PREFIX, Settings
from sandbox.children import die_with_parent
from sandbox.redis_server import LocalRedis, RedisUnavailableError
from sandbox.sentinel_cluster import LocalSentinelCluster
from worker.engine.redis_client import connect
from worker.exceptions import NotificationConfigError

#: The sandbox accepts any well-formed key; this one is obviously not a real secret.
DEV_ROUTING_KEY = "DEVSANDBOX" + "0" * 21 + "1"
STOP_GRACE_SECONDS = 15.0
#: What the printed curl example sends.
CURL_EXAMPLE = {"recipient": "you@example.com", "subject": "Hello over HTTP"}


class DevStackError(RuntimeError):
    """The stack cannot start; the message says why in one line."""


def process_env(
    environment: Mapping[str, str], stack: Mapping[str, str], dotenv: Path
) -> dict[str, str]:
    """What the stack's processes run with: the environment, the stack's settings over it,
    and blanks (the environment wins over a ``.env`` file in the checkout, and blank is
    unset) for what must not come from that file or the shell: an SMTP login the sink
    would refuse, and a team's own routing key (production's, perhaps), where the sandbox's
    made-up key pages for every team."""
    env = {k: v for k, v in environment.items() if not k.startswith("SMTP_")}
    env.update(stack)
    env["SMTP_USERNAME"] = env["SMTP_PASSWORD"] = ""
    from_file = dotenv_values(dotenv) if dotenv.is_file() else {}
    for name in [*env, *from_file]:
        if name.upper().startswith(TEAM_KEY_PREFIX):
            env[name] = ""
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Service:
    """One child process of the stack."""

    name: str
    argv: list[str]
    ready: str  # a line in its log, or an http:// URL that answers
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str], cwd: Path) -> None:
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own argument list
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    def is_ready(self) -> bool:
        if self.ready.startswith("http"):
            try:
                return httpx.get(self.ready, timeout=1).status_code < 500
            except httpx.HTTPError:
                return False
        return self.ready.encode() in self.log.read_bytes()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def last_lines(self, n: int = 5) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in lines[-n:])

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


@dataclass
class DevStack:
    host: str = "127.0.0.1"
    port: int = 8025
    smtp_port: int = 1025
    flower_port: int = 5555
    api_port: int = 8000
    redis_url: str | None = None
    concurrency: int = 8
    ha: bool = False
    services: list[Service] = field(default_factory=list)
    local_redis: LocalRedis | None = None
    cluster: LocalSentinelCluster | None = None
    env: dict[str, str] = field(default_factory=dict)
    announced: bool = False
    api_token: str = field(default_factory=new_token, repr=False)

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def flower_url(self) -> str:
        return f"http://{self.host}:{self.flower_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def check_ports(self) -> None:
        """Fail in one clear line for a port another program holds."""
        wanted = [
            (self.port, "the sandbox web page and PagerDuty API", "--port"),
            (self.smtp_port, "the SMTP sink", "--smtp-port"),
            (self.flower_port, "Flower", "--flower-port"),
            (self.api_port, "the HTTP API", "--api-port"),
        ]
        seen: dict[int, str] = {}
        for port, what, option in wanted:
            if port in seen:
                raise DevStackError(f"port {port} is asked for both {seen[port]} and {what}")
            seen[port] = what
            if not port_is_free(self.host, port):
                raise DevStackError(
                    f"port {port} for {what} is taken (another program listens there); "
                    f"choose another with {option}"
                )

    def start_redis(self) -> str:
        if self.redis_url:
            if self.ha:
                raise DevStackError("--ha starts its own Redis: unset REDIS_URL to use it")
            try:
                settings = Settings(redis_url=self.redis_url, redis_retry_seconds=0)
                client = connect(settings, socket_connect_timeout=3)
                client.ping()
                client.close()
            except (redis.RedisError, ValueError) as exc:
                raise DevStackError(f"REDIS_URL does not answer: {exc}") from None
            return self.redis_url
        try:
            if self.ha:
                self.cluster = LocalSentinelCluster().start()
                return self.cluster.url
            self.local_redis = LocalRedis().start()
        except RedisUnavailableError as exc:
            raise DevStackError(str(exc)) from None
        return self.local_redis.url

    def child_env(self, redis_url: str) -> dict[str, str]:
        """What the children run with; also what other terminals pick up. Nothing in it
        is a secret anywhere else: the routing key is made up, the API token lives as long
        as this stack, on loopback."""
        dev_token = {"name": "dev", "sha256": token_hash(self.api_token), "scopes": ["admin"]}
        own = {
            "REDIS_URL": redis_url,
            "API_TOKENS": json.dumps([dev_token]),
            "PAGERDUTY_API_URL": f"{self.sandbox_url}/v2/enqueue",
            "PAGERDUTY_ROUTING_KEY": DEV_ROUTING_KEY,
            "SMTP_HOST": self.host,
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_STARTTLS": "false",
            "SMTP_USE_TLS": "false",
        }
        own |= {name: os.environ[name] for name in INTAKE_SETTINGS if name in os.environ}
        if self.ha:
            own["REDIS_MIN_REPLICAS"] = "1"
        services_file = heartbeat_services_file()
        if services_file:
            own["HEARTBEAT_SERVICES_FILE"] = str(Path(services_file).resolve())
        return own

    def heartbeat_line(self) -> str:
        """Which heartbeat catalogue the worker and beat run with."""
        path = self.env.get("HEARTBEAT_SERVICES_FILE")
        if not path:
            return (
                "off: no HEARTBEAT_SERVICES_FILE "
                "(HEARTBEAT_SERVICES_FILE=services.example.toml make run turns it on)"
            )
        try:
            count = len(load_catalogue(path).services)
        except NotificationConfigError as exc:
            return f"{path}: {exc}"
        return f"{path} ({count} service{'' if count == 1 else 's'})"

    def start(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Start every process and wait until each is ready; :class:`Stopping` when
        ``stop_requested`` turns true meanwhile (the caller stops what did start)."""
        other = running_stack()
        if other is not None:
            raise DevStackError(
                f"a dev stack is already running (pid {other['pid']}); stop it with Ctrl-C "
                "in its terminal first"
            )
        self.check_ports()
        folder = dev_dir()
        logs = folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        redis_url = self.start_redis()
        self.env = self.child_env(redis_url)
        env = process_env(os.environ, self.env, Path(".env"))
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "worker"]
        self.services = [
            Service(
                "sandbox",
                [
                    py,
                    "-m",
                    "cli.main",
                    "sandbox",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--smtp-port",
                    str(self.smtp_port),
                ],
                f"{self.sandbox_url}/healthz",
                logs / "sandbox.log",
            ),
            Service(
                "worker",
                [
                    *celery,
                    "worker",
                    "-P",
                    "threads",
                    "-c",
                    str(self.concurrency),
                    "-l",
                    "INFO",
                    "-n",
                    "dev@%h",
                    "--without-mingle",
                    "--without-gossip",
                ],
                "ready.",
                logs / "worker.log",
            ),
            Service(
                "beat",
                [*celery, "beat", "-l", "INFO", "-s", str(folder / "celerybeat-schedule")],
                "beat: Starting",
                logs / "beat.log",
            ),
            Service(
                "flower",
                [*celery, "flower", f"--address={self.host}", f"--port={self.flower_port}"],
                f"{self.flower_url}/healthcheck",
                logs / "flower.log",
            ),
            Service(
                "api",
                [py, "-m", "cli.main", "api", "--host", self.host, "--port", str(self.api_port)],
                f"{self.api_url}/healthz",
                logs / "api.log",
            ),
        ]
        for service in self.services:
            service.log.write_bytes(b"")
            service.start(env, Path.cwd())
        wait_ready(self.services, 60.0, f" (see {folder}/logs)", stop_requested)
        write_stack(
            {
                "pid": os.getpid(),
                "children": [s.proc.pid for s in self.services if s.proc is not None],
                "sandbox": self.sandbox_url,
                "flower": self.flower_url,
                "api": self.api_url,
                "api_token": self.api_token,
                "smtp": f"{self.host}:{self.smtp_port}",
                "redis": redis_url,
                "logs": str(logs),
                "env": self.env,
            }
        )
        self.announced = True

    def first_exited(self) -> Service | None:
        return next((s for s in self.services if s.exited() is not None), None)

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL), Redis, and forget the stack."""
        for service in reversed(self.services):
            service.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for service in reversed(self.services):
            if not service.wait(max(0.1, deadline - time.monotonic())):
                service.signal(signal.SIGKILL)
                service.wait(5)
            service.close()
        if self.local_redis is not None:
            self.local_redis.cleanup()
            self.local_redis = None
        if self.cluster is not None:
            self.cluster.cleanup()
            self.cluster = None
        if self.announced:
            remove_stack()
            self.announced = False

    def describe(self) -> list[str]:
        redis_note = " (private, removed on exit)" if self.local_redis else ""
        failover: list[str] = []
        if self.cluster is not None:
            master = self.cluster.current_master()
            redis_note = (
                f"\n                      (private: master 127.0.0.1:{master.port}, "
                f"{len(self.cluster.replicas)} replicas, {len(self.cluster.sentinels)} "
                "Sentinels; REDIS_MIN_REPLICAS=1)"
            )
            failover = [
                f"  kill -9 {master.pid}   # crash the Redis master: a replica takes over",
            ]
        return [
            "GDS Notification Service: dev stack is up",
            f"  sandbox page        {self.sandbox_url}",
            f"  PagerDuty API       {self.sandbox_url}/v2/enqueue",
            f"  SMTP sink           {self.host}:{self.smtp_port}",
            f"  Flower              {self.flower_url}",
            f"  HTTP API            {self.api_url}  (docs {self.api_url}/docs)",
            f"  API token           {self.api_token}  (admin, this run only)",
            f"  Redis               {self.env['REDIS_URL']}{redis_note}",
            f"  heartbeats          {self.heartbeat_line()}",
            f"  logs                {dev_dir() / 'logs'}",
            "",
            "Try, in another terminal of this checkout:",
            '  .venv/bin/gds-notify send db-prod-01 "Disk full" --priority critical --wait',
            '  .venv/bin/gds-notify send you@example.com "Nightly report" --wait',
            '  eval "$(.venv/bin/gds-notify dev --env)"   # its settings, for any producer',
            *failover,
            f"  curl {self.api_url}/v1/notifications \\",
            f"       -H 'Authorization: Bearer {self.api_token}' \\",
            "       -H 'Content-Type: application/json' \\",
            "       -d '" + json.dumps(CURL_EXAMPLE) + "'",
            "",
            "Ctrl-C stops everything.",
        ]


def wait_ready(
    services: list[Service],
    timeout: float,
    hint: str = "",
    stop_requested: Callable[[], bool] = lambda: False,
) -> None:
    """Wait until every service says it is ready; :class:`DevStackError` naming the first
    that exits, or those still not ready after ``timeout`` seconds (``hint`` appended);
    :class:`Stopping` as soon as ``stop_requested()``."""
    pending = list(services)
    end = time.monotonic() + timeout
    while pending:
        if stop_requested():
            raise Stopping
        for service in list(pending):
            code = service.exited()
            if code is not None:
                raise DevStackError(
                    f"{service.name} exited at start (code {code}): {service.last_lines()}"
                )
            if service.is_ready():
                pending.remove(service)
        if pending and time.monotonic() > end:
            names = ", ".join(s.name for s in pending)
            raise DevStackError(f"not ready after {timeout:.0f} s: {names}{hint}")
        time.sleep(0.1)


def heartbeat_services_file() -> str | None:
    """``HEARTBEAT_SERVICES_FILE`` from the environment, else from ``.env``, as the
    children will read it."""
    found = os.environ.get("HEARTBEAT_SERVICES_FILE")
    if found is None and Path(".env").is_file():
        found = dotenv_values(".env").get("HEARTBEAT_SERVICES_FILE")
    return found or None


class Stopping(Exception):
    """A stop signal arrived while the stack was starting."""


class Output:
    """Printing that never stands in the way of stopping: once the reader of the output is
    gone (a pipe whose reader died with the same Ctrl-C), what is left is dropped."""

    def __init__(self, echo: Any) -> None:
        self.echo = echo
        self.gone = False

    def __call__(self, line: str, err: bool = False) -> None:
        if self.gone:
            return
        try:
            self.echo(line, err=err)
        except OSError:  # BrokenPipeError, EIO from a closed terminal
            self.gone = True
            # Later writes (and the interpreter's flush at exit) go nowhere, silently.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, (sys.stderr if err else sys.stdout).fileno())
                os.close(devnull)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_until_interrupted(stack: DevStack, echo: Any) -> int:
    """Start ``stack``, print where things are, serve until SIGINT, SIGTERM or SIGHUP; stop
    everything whatever happens; the exit code."""
    say = Output(echo)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    code = 0
    try:
        stack.start(stop_requested=lambda: stopping)
        for line in stack.describe():
            say(line)
        while not stopping:
            died = stack.first_exited()
            if died is not None:
                say(f"{died.name} exited unexpectedly: {died.last_lines()}", err=True)
                code = 1
                break
            time.sleep(0.3)
        say("stopping the dev stack ...")
    except Stopping:
        say("stopping the dev stack before it finished starting ...")
        code = 130
    finally:
        try:
            stack.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    say("stopped; nothing left running")
    return code
