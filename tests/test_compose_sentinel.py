"""docker-compose.sentinel.yml: the Sentinel layout over docker-compose.yml.

There is no Docker daemon on the machines that run these tests, so the layout is checked
in two ways: its shape (three Sentinels, two replicas, every process following the
Sentinels, nothing published), and its Redis and Sentinel configuration run for real on
loopback, with the service names swapped for 127.0.0.1 — the directives, passwords and
master name the file writes are the ones a real ``redis-server`` and Sentinel accept.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from config.redis_address import parse_redis_url
from config.settings import Settings
from sandbox.redis_server import LocalRedis, free_port, redis_server_binary
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
        command = services[name]["command"].split()
        assert command[command.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
        assert "--masterauth" in command
        assert "--requirepass" in command
        assert "healthcheck" in services[name]
    # The first master must be able to follow a new one when it comes back.
    assert "--masterauth" in services["redis"]["command"].split()
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


def sentinel_config(hosts: dict[str, str], port: int) -> str:
    """What a Sentinel container writes to /tmp/sentinel.conf, by running its own shell."""
    script = override()["services"]["sentinel-1"]["command"][2].replace("$$", "$")
    printing = script.split(" > /tmp/sentinel.conf")[0]
    environment = {
        "SENTINEL_NAME": "sentinel-1",
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }
    text = subprocess.run(
        ["sh", "-c", printing], env=environment, capture_output=True, text=True, check=True
    ).stdout
    text = interpolate(text, hosts).replace("port 26379", f"port {port}")
    # One Sentinel here, so a quorum of one; the file's is two of three.
    text, found = re.subn(r"^(sentinel monitor gds 127\.0\.0\.1 \d+) 2$", r"\1 1", text, flags=re.M)
    assert found == 1, text
    return text + "bind 127.0.0.1\n"


def server_args(name: str, hosts: dict[str, str]) -> list[str]:
    command = interpolate(" ".join(override()["services"][name]["command"].split()), hosts)
    return shlex.split(command)[1:]  # after redis-server


@contextlib.contextmanager
def process(argv: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def test_the_files_redis_and_sentinel_settings_run_and_the_service_follows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server to run the layout's configuration with")
    master_port, sentinel_port = free_port(), free_port()
    hosts = {"redis-replica-1": "127.0.0.1", "sentinel-1": "127.0.0.1"}
    master_hosts = {**hosts, "--replica-announce-ip redis": "--replica-announce-ip 127.0.0.1"}
    master = LocalRedis(port=master_port, extra=server_args("redis", master_hosts))
    replica_hosts = {**hosts, "redis 6379": f"127.0.0.1 {master_port}"}
    replica = LocalRedis(extra=server_args("redis-replica-1", replica_hosts))
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "sentinel.conf"
        config.write_text(
            sentinel_config(
                {**hosts, "gds redis 6379": f"gds 127.0.0.1 {master_port}"}, sentinel_port
            )
            + f"dir {folder}\n"
        )
        try:
            master.start()
            replica.start()
            with process([binary, str(config), "--sentinel"]):
                sentinel = redis.Redis(port=sentinel_port, password=SENTINEL_PASSWORD)
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    with contextlib.suppress(redis.RedisError):
                        if sentinel.sentinel_get_master_addr_by_name("gds"):  # type: ignore[no-untyped-call,unused-ignore]
                            break
                    time.sleep(0.1)
                sentinel.close()
                monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD)
                url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel_port}/gds/0"
                client = connect(Settings(redis_url=url, redis_retry_seconds=0))
                client.set("compose-layout", "written through the Sentinel")
                assert client.wait(1, 5000) == 1  # the replica has it
                client.delete("compose-layout")
                client.close()
                with pytest.raises(redis.AuthenticationError):
                    redis.Redis(port=sentinel_port).ping()  # the Sentinels want their password
        finally:
            replica.cleanup()
            master.cleanup()
