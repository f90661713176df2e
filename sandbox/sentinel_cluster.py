"""A Redis that fails over, for laptops and tests: a master, replicas and Sentinels on
loopback ports (``gds-notify dev --ha``, the failover drill). Each server runs from its own
temporary folder (Sentinel rewrites its configuration file) and dies with the process
that started it.

Its ``url`` is the service's Sentinel form of ``REDIS_URL``:
``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/MASTER/0``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import redis

from sandbox.children import die_with_parent
from sandbox.redis_server import LocalRedis, RedisUnavailableError, free_port, redis_server_binary

MASTER_NAME = "gds"


class LocalSentinel:
    """One ``redis-server --sentinel`` watching ``master_name``."""

    def __init__(
        self, binary: str, master_port: int, master_name: str, quorum: int, down_after_ms: int
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="gds-sentinel-"))
        self.config = self.directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1 -::1\n"  # IPv6 too where loopback has it ('-': if it has)
            f"dir {self.directory}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {max(3 * down_after_ms, 3000)}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._proc = subprocess.Popen(  # noqa: S603 - our own argument list
            [self.binary, str(self.config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self.directory, ignore_errors=True)


class LocalSentinelCluster:
    """A master, ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a majority)."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        master_name: str = MASTER_NAME,
        down_after_ms: int = 1000,
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RedisUnavailableError("no redis-server for a Sentinel cluster")
        self.binary = binary
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        # Every write of a job is on disk at the master and its replicas, as in production.
        self.master = LocalRedis(appendonly=True)
        self.replicas = [
            LocalRedis(appendonly=True, extra=["--replicaof", "127.0.0.1", str(self.master.port)])
            for _ in range(replicas)
        ]
        self.sentinels = [
            LocalSentinel(binary, self.master.port, master_name, sentinels // 2 + 1, down_after_ms)
            for _ in range(sentinels)
        ]

    @property
    def servers(self) -> list[LocalRedis]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the service: every Sentinel, the master's name, database 0."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self, timeout: float = 30.0) -> Self:
        try:
            for server in self.servers:
                server.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self._wait(self._ready, timeout, "the Sentinels did not see the whole cluster")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _ready(self) -> bool:
        for server in self.replicas:
            info = redis.Redis(port=server.port).info("replication")
            if info.get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                master = cast(dict[str, Any], client.sentinel_master(self.master_name))
            except redis.RedisError:
                return False
            finally:
                client.close()
            if int(master.get("num-slaves", 0)) < len(self.replicas):
                return False
            if int(master.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the Sentinels see it now (None while they disagree)."""
        seen = set()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address = client.sentinel_get_master_addr_by_name(self.master_name)
                seen.add(int(cast(tuple[str, int], address)[1]))
            except (redis.RedisError, TypeError):
                return None
            finally:
                client.close()
        return seen.pop() if len(seen) == 1 else None

    def current_master(self) -> LocalRedis:
        port = self.master_port()
        found = next((s for s in self.servers if s.port == port), None)
        if found is None:
            raise RedisUnavailableError("the Sentinels agree on no master")
        return found

    def kill_master(self) -> LocalRedis:
        """SIGKILL the current master, as a crash would; returns it."""
        victim = self.current_master()
        victim.kill()
        return victim

    def freeze_master(self) -> LocalRedis:
        """SIGSTOP the current master, as a hung host would; returns it."""
        victim = self.current_master()
        victim.freeze()
        return victim

    def wait_for_failover(self, old: LocalRedis, timeout: float = 30.0) -> LocalRedis:
        """Wait until every Sentinel names a new master that answers as one."""

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old.port:
                return False
            with contextlib.suppress(redis.RedisError):
                info = redis.Redis(port=port).info("replication")
                return bool(info.get("role") == "master")
            return False

        self._wait(promoted, timeout, "no replica was promoted")
        return self.current_master()

    def _wait(self, done: object, timeout: float, problem: str) -> None:
        end = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError):
                if callable(done) and done():
                    return
            if time.monotonic() > end:
                raise RedisUnavailableError(problem)
            time.sleep(0.1)

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
