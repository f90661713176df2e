"""The README's first hour and its producer examples, walked through on a fresh copy of the
checkout the way a new user does it: the dev stack started from the copy, the commands
typed in "another terminal" of it with none of the service's settings, the stack's
settings handed to the other producers with ``eval "$(gds-notify dev --env)"`` as the
README says. Every example must reach the dev stack, whatever else listens on this
machine (a Redis on 6379, say)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.test_readme_examples import blocks

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
#: A fresh terminal: none of the service's settings, no dev folder chosen for it.
SERVICE_VARIABLES = ("REDIS_URL", "PAGERDUTY_", "SMTP_", "HEARTBEAT_", "GDS_", "PYTEST", "API_")


def fresh_copy(into: Path) -> Path:
    """The checkout as ``git clone`` gives it (what git tracks, and new files not ignored:
    the change under test), with this suite's virtualenv as its ``.venv``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = into / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (into / ".venv").symlink_to(VENV, target_is_directory=True)
    return into


class Terminal:
    """A shell in the copy: bash, the copy's code first on the path (as its own editable
    install would put it), nothing of the service's configuration."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_VARIABLES)}
        self.env["PYTHONPATH"] = str(checkout)

    def run(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, program: str) -> subprocess.CompletedProcess[str]:
        path = self.checkout / "producer.py"
        path.write_text(program, encoding="utf-8")
        return self.run(".venv/bin/python producer.py")


class DevStack:
    """``.venv/bin/gds-notify dev`` started in the copy, on free ports (README step 1)."""

    def __init__(self, terminal: Terminal, **env: str) -> None:
        self.ports = {
            name: free_port() for name in ("port", "smtp-port", "flower-port", "api-port")
        }
        argv = [".venv/bin/gds-notify", "dev", "--concurrency", "4"]
        for option, port in self.ports.items():
            argv += [f"--{option}", str(port)]
        self.proc = subprocess.Popen(
            argv,
            cwd=terminal.checkout,
            env={**terminal.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.banner += line
            if line.startswith("Ctrl-C stops everything"):
                return
        raise AssertionError(f"gds-notify dev did not start: {self.banner}{self.stop()}")

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    def incidents(self) -> list[dict[str, object]]:
        return list(httpx.get(f"{self.sandbox}/sandbox/incidents").json())

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return out + err


@pytest.fixture
def terminal(tmp_path: Path) -> Terminal:
    return Terminal(fresh_copy(tmp_path / "clone"))


def test_the_first_hour_and_every_producer_example_reach_the_dev_stack(
    terminal: Terminal,
) -> None:
    stack = DevStack(terminal)
    try:
        assert "heartbeats          off: no HEARTBEAT_SERVICES_FILE" in stack.banner
        assert (terminal.checkout / ".gds-dev" / "stack.json").exists()

        # Step 2: the two sends as written; the page's output names the next command.
        [sends] = blocks("readme-first-hour", "sh")
        sent = terminal.run(sends)
        assert sent.returncode == 0, sent.stderr
        assert "delivered" in sent.stdout
        [incident] = stack.incidents()
        hint = re.search(r"`([^`]*gds-notify resolve [^`]+)` resolves it", sent.stderr)
        assert hint is not None, sent.stderr
        assert hint.group(1) == f".venv/bin/gds-notify resolve {incident['dedup_key']}"
        resolved = terminal.run(f"{hint.group(1)} --wait")  # as printed
        assert resolved.returncode == 0, resolved.stderr
        assert stack.incidents()[0]["status"] == "resolved"
        messages = httpx.get(f"{stack.sandbox}/sandbox/messages").json()
        assert [m["subject"] for m in messages] == ["Nightly report"]

        # The Python producer finds the stack by itself (run from the checkout).
        [python_producer] = blocks("readme-python-producer")
        done = terminal.python(python_producer)
        assert done.returncode == 0, done.stderr
        wait_for(
            lambda: (
                [
                    i["status"]
                    for i in stack.incidents()
                    if i["dedup_key"] == "repl-db-prod-01-2026-11-23"
                ]
                == ["resolved"]
            ),
            timeout=60,
        )

        # Step 3: the other producers, in a shell given the stack's settings.
        env = 'eval "$(.venv/bin/gds-notify dev --env)"\n'
        [celery_client] = blocks("readme-celery-producer")
        (terminal.checkout / "celery_client.py").write_text(celery_client, encoding="utf-8")
        [redis_cli] = blocks("readme-shell-producer", "sh")
        [http] = blocks("readme-http-producer", "sh")
        done = terminal.run(
            env
            + ".venv/bin/python celery_client.py\n"
            + redis_cli
            + "\n"
            + http.replace(
                '"priority": "critical"', '"priority": "critical", "idempotency_id": "by-http"'
            )
            + "\n"
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["duplicate"] is False
        wanted = {"disk-db-prod-01", "disk-db-prod-01-sh", "by-http"}
        wait_for(
            lambda: wanted <= {str(i["dedup_key"]) for i in stack.incidents()},
            timeout=60,
        )

        # Step 4: a fault, then a send that retries through it.
        faults = f"curl -sS -X POST {stack.sandbox}/sandbox/faults -d " + shlex.quote(
            '{"sequence": [{"status": 503}, {"status": 429}]}'
        )
        assert terminal.run(faults).returncode == 0
        retried = terminal.run(
            '.venv/bin/gds-notify send db-prod-02 "Disk full" --priority critical --wait'
        )
        assert retried.returncode == 0, retried.stderr
        assert "pagerduty  #1  failed" in retried.stderr, retried.stderr
        assert "HTTP 503" in retried.stderr
    finally:
        log = stack.stop()
    assert "stopped; nothing left running" in log


def test_heartbeat_monitoring_in_the_dev_stack_as_the_readme_says(terminal: Terminal) -> None:
    stack = DevStack(terminal, HEARTBEAT_SERVICES_FILE="services.example.toml")
    try:
        catalogue = terminal.checkout / "services.example.toml"
        line = next(li for li in stack.banner.splitlines() if li.startswith("  heartbeats"))
        assert str(catalogue) in line
        assert re.search(r"\(\d+ services\)", line)
        listed = terminal.run(".venv/bin/gds-notify heartbeats")
        assert listed.returncode == 0, listed.stderr
        assert "billing-api" in listed.stdout
    finally:
        stack.stop()
