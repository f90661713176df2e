"""``gds-notify dev``: the whole stack on free ports, used from another "terminal" exactly
as the README says, seen in Flower and the sandbox page by a real headless browser, and
stopped by Ctrl-C with nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack_file import dev_dir
from tests.browser import CHROMIUM, headless
from tests.conftest import free_port, wait_for

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))
#: What a fresh terminal has: none of the service's settings.
SERVICE_VARIABLES = ("REDIS_URL", "PAGERDUTY_", "SMTP_", "HEARTBEAT_", "GDS_DEV_DIR")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_VARIABLES)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but still has a pid until its parent reaps it.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


class Dev:
    def __init__(self, proc: subprocess.Popen[str], ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports
        self.output = ""

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    @property
    def flower(self) -> str:
        return f"http://127.0.0.1:{self.ports['flower_port']}"


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[Dev]:
    if (dev_dir() / "stack.json").exists():
        pytest.fail(f"a dev stack already announces itself in {dev_dir()}; stop it first")
    ports = {
        "port": free_port(),
        "smtp_port": free_port(),
        "flower_port": free_port(),
        "api_port": free_port(),
    }
    argv = [GDS_NOTIFY, "dev", "--concurrency", "4"]
    for option, port in ports.items():
        argv += [f"--{option.replace('_', '-')}", str(port)]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dev = Dev(proc, ports)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            dev.output += line
            if line.startswith("Ctrl-C stops everything"):
                break
        else:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"gds-notify dev did not start: {dev.output} {err}")
        yield dev
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """A gds-notify command from another terminal: same checkout, no settings exported."""
    return subprocess.run(
        [GDS_NOTIFY, *args], env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def test_dev_stack_delivers_a_page_and_an_email_sent_with_the_cli(
    dev_stack: Dev, tmp_path: Path
) -> None:
    out = dev_stack.output
    assert f"sandbox page        {dev_stack.sandbox}" in out
    assert f"Flower              {dev_stack.flower}" in out
    assert f"SMTP sink           127.0.0.1:{dev_stack.ports['smtp_port']}" in out
    assert "gds-notify send" in out  # the next command to try

    page = cli(
        "send",
        "db-prod-01",
        "Disk full on db-prod-01",
        "--priority",
        "critical",
        "--idempotency-id",
        "dev-disk-1",
        "--wait",
    )
    assert page.returncode == 0, page.stderr
    page_job = page.stdout.split()[0]
    assert page.stdout.strip() == f"{page_job} delivered"
    assert "pagerduty  #1  delivered" in page.stderr

    mail = cli("send", "oncall@example.com", "Nightly report", "--body", "all good", "--wait")
    assert mail.returncode == 0, mail.stderr
    mail_job = mail.stdout.split()[0]

    [incident] = httpx.get(f"{dev_stack.sandbox}/sandbox/incidents").json()
    assert incident["summary"] == "Disk full on db-prod-01"
    assert incident["dedup_key"] == "dev-disk-1"
    [message] = httpx.get(f"{dev_stack.sandbox}/sandbox/messages").json()
    assert message["subject"] == "Nightly report"
    assert message["rcpt_tos"] == ["oncall@example.com"]

    status = cli("status", page_job)
    assert status.returncode == 0
    assert "pagerduty  delivered after 1 attempt(s)" in status.stdout

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    flower_dom = wait_for(
        lambda: (
            (dom := headless(f"{dev_stack.flower}/tasks", tmp_path, 4000))
            and f"{page_job}-pagerduty" in dom
            and f"{mail_job}-email" in dom
            and dom
        ),
        timeout=60,
        interval=1,
    )
    assert "deliver.pagerduty" in flower_dom
    assert "deliver.email" in flower_dom
    assert "SUCCESS" in flower_dom
    sandbox_dom = headless(dev_stack.sandbox + "/", tmp_path)
    assert "Disk full on db-prod-01" in sandbox_dom
    assert "Nightly report" in sandbox_dom


def test_the_printed_curl_example_sends_an_email_through_the_http_api(dev_stack: Dev) -> None:
    out = dev_stack.output
    api = f"http://127.0.0.1:{dev_stack.ports['api_port']}"
    assert f"HTTP API            {api}  (docs {api}/docs)" in out
    token = next(line.split()[2] for line in out.splitlines() if "API token" in line)
    assert token.startswith("gdsn_")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    command = "\n".join(lines[start : start + 4])
    done = subprocess.run(
        ["bash", "-c", command + " -sS -w '\n%{http_code}'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    answer, _, status = done.stdout.rpartition("\n")
    assert status == "202", done.stdout + done.stderr
    job_id = json.loads(answer)["job_id"]
    job = wait_for(
        lambda: (
            (
                r := httpx.get(
                    f"{api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
                )
            )
            and r.json().get("status") == "delivered"
            and r.json()
        )
    )
    assert job["source"] == "api"
    messages = httpx.get(f"{dev_stack.sandbox}/sandbox/messages").json()
    assert [m["subject"] for m in messages] == ["Hello over HTTP"]
    # The stack file hands other terminals the API and its token.
    stack = json.loads((dev_dir() / "stack.json").read_text())
    assert (stack["api"], stack["api_token"]) == (api, token)


def test_ctrl_c_stops_every_process_and_frees_every_port(dev_stack: Dev) -> None:
    stack = json.loads((dev_dir() / "stack.json").read_text())
    children = stack["children"]
    assert len(children) == 5  # sandbox, worker, beat, Flower, API
    assert all(alive(pid) for pid in children)
    redis_port = int(stack["redis"].rsplit(":", 1)[1].split("/")[0])

    dev_stack.proc.send_signal(signal.SIGINT)
    rest, err = dev_stack.proc.communicate(timeout=40)
    assert dev_stack.proc.returncode == 0, err
    assert "stopped; nothing left running" in rest
    assert "Traceback" not in err
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=10)
    assert not (dev_dir() / "stack.json").exists()
    for port in [*dev_stack.ports.values(), redis_port]:
        with socket.socket() as sock:  # nothing listens any more
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    # And other terminals no longer find a stack to talk to.
    assert (
        cli("config", "check", "--offline").stdout.count(
            "127.0.0.1:" + str(dev_stack.ports["port"])
        )
        == 0
    )


def test_a_taken_port_is_reported_in_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                GDS_NOTIFY,
                "dev",
                "--flower-port",
                str(port),
                "--port",
                str(free_port()),
                "--smtp-port",
                str(free_port()),
            ],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"Error: port {port} for Flower is taken (another program listens there); "
        "choose another with --flower-port"
    )


def test_commands_without_a_dev_stack_use_their_own_settings(
    service_env: Any,
) -> None:
    from click.testing import CliRunner

    from cli.main import main

    result = CliRunner().invoke(main, ["config", "check", "--offline"])
    assert result.exit_code == 0, result.output
    assert service_env.api_url in result.output
