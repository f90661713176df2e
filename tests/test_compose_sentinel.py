"""docker-compose.sentinel.yml: the Sentinel layout over docker-compose.yml.

There is no Docker daemon on the machines that run these tests, so the layout is checked
in two ways: its shape (three Sentinels, two replicas, every process following the
Sentinels, nothing published), and its Redis and Sentinel configuration run for real on
loopback, with the service names swapped for 127.0.0.1 — the directives, passwords and
master name the file writes are the ones a real ``redis-server`` and Sentinel accept.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from config.redis_address import parse_redis_url
from config.settings import Settings
from sandbox.redis_server import free_port, redis_server_binary
from worker.engine.redis_client import connect

ROOT = Path(__file__).resolve().parent.parent
APPS = ("worker-pagerduty", "worker-email", "beat", "flower", "api")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
PASSWORD, SENTINEL_PASSWORD = "compose-pw", "compose-sentinel-pw"


def override() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.sentinel.yml").read_text()))


def base() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def interpolate(text: str, hosts: dict[str, str]) -> str:
    """Compose's ``${VAR...}`` with our passwords, and service names as loopback."""
    for name, value in {
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }.items():
        while "${" + name in text:
            start = text.index("${" + name)
            text = text[:start] + value + text[text.index("}", start) + 1 :]
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)  # a default, as compose gives it
    for name, address in hosts.items():
        text = text.replace(name, address)
    return text


def test_the_layout_has_three_sentinels_two_replicas_and_every_process_follows_them() -> None:
    services = override()["services"]
    assert set(SENTINELS) <= set(services)
    replicas = [n for n in services if n.startswith("redis-replica-")]
    assert len(replicas) == 2
    for name in replicas:
        assert services[name]["environment"]["FIRST_ROLE"] == "replicaof redis 6379"
        assert "healthcheck" in services[name]
    for name in ("redis", *replicas):
        script = services[name]["command"][2]
        # The first master must be able to follow a new one when it comes back.
        assert '--masterauth "$$REDIS_PASSWORD"' in script
        assert '--requirepass "$$REDIS_PASSWORD"' in script
        assert "--replicaof" not in script  # the role is the file's: a failover rewrites it
        assert services[name]["environment"]["ANNOUNCE"] == name
    for name in (*replicas, *SENTINELS):  # each remembers the layout on its own volume
        assert services[name]["volumes"] == [f"{name}-data:/data"]
        assert f"{name}-data" in override()["volumes"]
    for name, service in {**base()["services"], **services}.items():
        assert "ports" not in service or name in ("flower", "api", "sandbox"), name
    for name in SENTINELS:
        assert "ports" not in services[name]
        assert "healthcheck" in services[name]
        assert services[name]["environment"]["SENTINEL_NAME"] == name
    for name in APPS:
        environment = services[name]["environment"]
        address = parse_redis_url(interpolate(environment["REDIS_URL"], {}))
        assert address.sentinel, name
        assert address.master_name == "gds", name
        assert sorted(h for h, _ in address.sentinels) == list(SENTINELS), name
        assert address.password == PASSWORD
        assert environment["REDIS_SENTINEL_PASSWORD"].startswith("${REDIS_SENTINEL_PASSWORD:?")
        assert environment["REDIS_MIN_REPLICAS"] == "${REDIS_MIN_REPLICAS:-1}"
        assert set(services[name]["depends_on"]) == set(SENTINELS), name
    assert "REDIS_SENTINEL_PASSWORD=" in (ROOT / ".env.example").read_text()


class Layout:
    """The file's three servers and three Sentinels, each started by its own service's
    command (its shell script, as the container runs it) on loopback: the service names
    are 127.0.0.1, each process has a port and a data folder of its own, and the image's
    entrypoint is the ``redis-server`` binary itself."""

    SERVERS = ("redis", "redis-replica-1", "redis-replica-2")

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.ports = {name: free_port() for name in (*self.SERVERS, *SENTINELS)}
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.password, self.sentinel_password = PASSWORD, SENTINEL_PASSWORD

    def start(self, name: str) -> None:
        service = override()["services"][name]
        script = service["command"][2].replace("$$", "$")
        data = self.folder / name
        data.mkdir(exist_ok=True)
        first_master = f"127.0.0.1 {self.ports['redis']}"
        script = (
            script.replace("/data/", f"{data}/")
            .replace("exec docker-entrypoint.sh redis-server", f"exec {self.binary}")
            .replace("port 26379", f"port {self.ports[name]}")
            .replace("gds redis 6379", f"gds {first_master}")
        )
        script += f" --port {self.ports[name]} --bind 127.0.0.1"
        environment = {
            "PATH": os.environ["PATH"],
            "REDIS_PASSWORD": self.password,
            "REDIS_SENTINEL_PASSWORD": self.sentinel_password,
            "REDIS_MAXMEMORY": "64mb",
            "ANNOUNCE": "127.0.0.1",
            "SENTINEL_NAME": "127.0.0.1",
        }
        role = service["environment"].get("FIRST_ROLE")
        if role is not None:
            environment["FIRST_ROLE"] = role.replace("redis 6379", first_master)
        self.running[name] = subprocess.Popen(
            ["sh", "-c", script],
            cwd=data,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.running.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def stop_all(self) -> None:
        """Stop every process, the Sentinels first (so they start no failover), each
        with SIGTERM, as a host's shutdown does."""
        for name in sorted(self.running, key=lambda n: n not in SENTINELS):
            self.stop(name)

    def server(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], password=self.password, socket_timeout=2)

    def sentinel(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], password=self.sentinel_password, socket_timeout=2)

    def masters(self) -> set[str]:
        """The master each Sentinel names, by service, with its flags: one entry when they
        agree on a master they see up."""
        seen = set()
        for name in SENTINELS:
            with self.sentinel(name) as client:
                state = client.sentinel_master("gds")  # type: ignore[no-untyped-call,unused-ignore]
            port = int(state["port"])
            [server] = [n for n in self.SERVERS if self.ports[n] == port]
            seen.add(f"{server} {state['flags']}")
        return seen

    def replicas(self, name: str) -> int:
        with self.server(name) as client:
            return int(client.info("replication")["connected_slaves"])

    def role(self, name: str) -> str:
        with self.server(name) as client:
            return str(client.info("replication")["role"])

    def state(self) -> str:
        """Each running server's role and master, each Sentinel's master: for a failure."""
        seen = []
        for name in self.running:
            try:
                if name in SENTINELS:
                    with self.sentinel(name) as client:
                        master = client.sentinel_master("gds")  # type: ignore[no-untyped-call,unused-ignore]
                    seen.append(f"{name}: {master['port']} {master['flags']}")
                else:
                    with self.server(name) as client:
                        info = client.info("replication")
                    seen.append(
                        f"{name} ({self.ports[name]}): {info['role']} "
                        f"{info.get('master_port', '')} {info.get('master_link_status', '')} "
                        f"replicas {info.get('connected_slaves', '')}"
                    )
            except redis.RedisError as exc:
                seen.append(f"{name}: {exc}")
        return "; ".join(seen)

    def url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{self.ports[n]}" for n in SENTINELS)
        return f"redis+sentinel://:{self.password}@{sentinels}/gds/0"


def settled(check: Any, layout: Layout | None = None, timeout: float = 120.0) -> Any:
    """``check()``'s first true answer, asking through errors (a process starting, an
    election) until ``timeout`` (generous: on a loaded machine a failover's replica
    reconfiguration has taken over a minute); the layout's state if it never comes."""
    end = time.monotonic() + timeout
    while True:
        try:
            answer = check()
            if answer:
                return answer
        except redis.RedisError:
            if time.monotonic() > end:
                raise
        if time.monotonic() > end:
            state = layout.state() if layout is not None else ""
            raise AssertionError(f"not settled in {timeout} s: {check()!r}; {state}")
        time.sleep(0.2)


@pytest.mark.timeout(600)  # a failover, a return and a reboot: minutes on a loaded machine
def test_a_reboot_after_a_failover_keeps_the_new_master_and_its_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The file's servers and Sentinels, run for real: the service writes through the
    Sentinels; the master dies and a replica takes over; the old master comes back as a
    replica; then everything restarts at once, with both passwords changed. The Sentinels
    used to start from the first layout again (watching the old master, now a replica:
    no master at all) and the servers from their command lines (the old master a master
    again, its replicas resyncing from it, every write since the failover gone)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server to run the layout's configuration with")
    layout = Layout(binary, tmp_path)

    def written(value: str) -> bool:
        monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", layout.sentinel_password)
        client = connect(Settings(redis_url=layout.url(), redis_retry_seconds=0))
        try:
            client.set(f"compose-layout-{value}", value)
            return bool(client.wait(1, 5000) >= 1)  # a replica has it
        finally:
            client.close()

    try:
        for name in (*Layout.SERVERS, *SENTINELS):
            layout.start(name)
        settled(lambda: layout.masters() == {"redis master"}, layout)
        settled(lambda: written("before"), layout)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=layout.ports["sentinel-1"]).ping()  # Sentinels want a password

        layout.stop("redis", signal.SIGKILL)
        # Its port stays taken, as a dead host's address would: a Redis another test
        # process starts meanwhile must not answer the Sentinels there.
        dead = socket.socket()
        dead.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        dead.bind(("127.0.0.1", layout.ports["redis"]))
        [promoted] = settled(
            lambda: (
                {m.split()[0] for m in layout.masters()} - {"redis"}
                if len(layout.masters()) == 1
                else None
            ),
            layout,
        )
        # The other replica follows the new master before a write waits for one.
        settled(lambda: layout.replicas(promoted), layout)
        settled(lambda: written("after"), layout)
        dead.close()
        layout.start("redis")  # back, and told to follow the new master
        settled(lambda: layout.role("redis") == "slave", layout)

        layout.stop_all()
        layout.password, layout.sentinel_password = "rotated-pw", "rotated-sentinel-pw"
        for name in (*Layout.SERVERS, *SENTINELS):
            layout.start(name)
        assert settled(lambda: layout.masters() == {f"{promoted} master"}, layout)
        assert layout.role(promoted) == "master"
        for name in Layout.SERVERS:
            with layout.server(name) as client:
                settled(lambda c=client: c.get("compose-layout-after") == b"after", layout)
                assert client.get("compose-layout-before") == b"before"
        settled(lambda: written("rebooted"), layout)
    finally:
        for name in list(layout.running):
            layout.running.pop(name).kill()
