"""``gds-notify dev``: the whole stack on free ports, used from another "terminal" exactly
as the README says, seen in Flower and the sandbox page by a real headless browser, and
stopped by Ctrl-C with nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.dev_stack_file import INTAKE_SETTINGS, dev_dir, running_stack
from config.redis_address import parse_redis_url
from tests.browser import CHROMIUM, headless
from tests.conftest import free_port, wait_for

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))
#: What a fresh terminal has: none of the service's settings (GDS_DEV_DIR stays: the
#: suite's own, see conftest.py, stands for the checkout's .gds-dev).
SERVICE_VARIABLES = ("REDIS_URL", "PAGERDUTY_", "SMTP_", "HEARTBEAT_", *INTAKE_SETTINGS)


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
        self.started = False

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    @property
    def flower(self) -> str:
        return f"http://127.0.0.1:{self.ports['flower_port']}"


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[Dev]:
    with running_dev(tmp_path) as dev:
        yield dev


@contextlib.contextmanager
def running_dev(tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[Dev]:
    """``gds-notify dev`` on free ports (its terminal's settings ``env`` on top of a fresh
    terminal's) until its banner's last line; Ctrl-C after."""
    if (dev_dir() / "stack.json").exists():
        pytest.fail(f"a dev stack already announces itself in {dev_dir()}; stop it first")
    for attempt in range(3):
        # A free port is free when asked, not when the stack binds it: another test's
        # outgoing connection may take it as its own source port meanwhile.
        dev = _start_dev(tmp_path, options, env)
        proc = dev.proc
        if dev.started or "is already in use" not in dev.output or attempt == 2:
            break
    try:
        if not dev.started:
            pytest.fail(f"gds-notify dev did not start: {dev.output}")
        yield dev
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _start_dev(tmp_path: Path, options: tuple[str, ...], env: dict[str, str] | None) -> Dev:
    """``gds-notify dev`` on ports free now, read up to its banner's last line (``started``)
    or to its exit (its output then holds why, stderr included)."""
    ports = {
        "port": free_port(),
        "smtp_port": free_port(),
        "flower_port": free_port(),
        "api_port": free_port(),
    }
    argv = [GDS_NOTIFY, "dev", "--concurrency", "4", *options]
    for option, port in ports.items():
        argv += [f"--{option.replace('_', '-')}", str(port)]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=clean_env() | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dev = Dev(proc, ports)
    assert proc.stdout is not None
    for line in proc.stdout:
        dev.output += line
        if line.startswith("Ctrl-C stops everything"):
            dev.started = True
            return dev
    dev.output += proc.stderr.read() if proc.stderr else ""
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return dev


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


def test_routing_rules_the_stack_started_with_reach_producers_in_other_terminals(
    tmp_path: Path,
) -> None:
    """Routing happens where a job enters: the CLI in a fresh terminal routes an emergency
    by the stack's ROUTING_RULES (a page and an email), not by the default (a page)."""
    rules = [
        {
            "priority": ["emergency"],
            "channels": ["pagerduty", "email"],
            "email_to": "oncall@example.com",
        }
    ]
    with running_dev(tmp_path, env={"ROUTING_RULES": json.dumps(rules)}) as dev:
        sent = cli("send", "db-prod-01", "Replica lost", "--priority", "emergency", "--wait")
        exported = cli("dev", "--env")
        messages = httpx.get(f"{dev.sandbox}/sandbox/messages").json()
        incidents = httpx.get(f"{dev.sandbox}/sandbox/incidents").json()
    assert sent.returncode == 0, sent.stderr
    assert "pagerduty  #1  delivered" in sent.stderr
    assert "email  #1  delivered" in sent.stderr
    assert [m["rcpt_tos"] for m in messages] == [["oncall@example.com"]]
    assert [i["summary"] for i in incidents] == ["Replica lost"]
    assert f"export ROUTING_RULES={shlex.quote(json.dumps(rules))}" in exported.stdout


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
    # ...and to no other user: it holds an admin token.
    assert (dev_dir() / "stack.json").stat().st_mode & 0o777 == 0o600


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


def test_dev_ha_runs_on_sentinels_and_a_killed_master_loses_no_page(tmp_path: Path) -> None:
    with running_dev(tmp_path, "--ha") as dev:
        stack = json.loads((dev_dir() / "stack.json").read_text())
        assert stack["redis"].startswith("redis+sentinel://127.0.0.1:")
        assert stack["env"]["REDIS_MIN_REPLICAS"] == "1"
        assert "2 replicas, 3 Sentinels; REDIS_MIN_REPLICAS=1" in dev.output
        [kill] = [line.split() for line in dev.output.splitlines() if "kill -9" in line]
        master_pid = int(kill[2])
        before = cli("send", "db-1", "Before the failover", "--priority", "critical", "--wait")
        assert before.returncode == 0, before.stderr

        os.kill(master_pid, signal.SIGKILL)  # what the banner says to try
        after = cli("send", "db-2", "After the failover", "--priority", "critical", "--wait")
        assert after.returncode == 0, after.stderr
        assert after.stdout.strip().endswith("delivered")
        summaries = {i["summary"] for i in httpx.get(f"{dev.sandbox}/sandbox/incidents").json()}
        assert summaries == {"Before the failover", "After the failover"}
        check = cli("config", "check")
        assert "as the Sentinels say; 1 replica)" in check.stdout, check.stdout

        sentinel_ports = [port for _, port in parse_redis_url(stack["redis"]).sentinels]
        dev.proc.send_signal(signal.SIGINT)
        dev.proc.communicate(timeout=40)
        assert dev.proc.returncode == 0
        for port in sentinel_ports:  # the cluster went with the stack
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))


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


def dev_ports() -> list[str]:
    argv = []
    for option in ("--port", "--smtp-port", "--flower-port", "--api-port"):
        argv += [option, str(free_port())]
    return argv


def announced(timeout: float = 90) -> dict[str, Any]:
    """The stack file, once the stack is up."""
    path = dev_dir() / "stack.json"
    wait_for(path.exists, timeout=timeout, interval=0.2)
    return dict(json.loads(path.read_text()))


def redis_pid(stack: dict[str, Any]) -> int:
    """The private redis-server's pid, found by its port."""
    port = stack["redis"].rsplit(":", 1)[1].split("/")[0]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            # redis-server rewrites its title to "redis-server HOST:PORT".
            title = cmdline.read_bytes().replace(b"\0", b" ")
            if b"redis-server" in title and f":{port}".encode() in title:
                return int(cmdline.parent.name)
    raise AssertionError(f"no redis-server on port {port}")


def all_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


@pytest.mark.parametrize("reader", ["cat", "head -n 1"])
def test_ctrl_c_through_a_pipe_stops_everything(reader: str, tmp_path: Path) -> None:
    """`make run 2>&1 | tee run.log`: Ctrl-C reaches the whole pipeline, the reader dies
    first, and printing fails; the stack must stop all the same."""
    command = f"{shlex.quote(GDS_NOTIFY)} dev --concurrency 2 {' '.join(dev_ports())} 2>&1"
    shell = subprocess.Popen(
        ["bash", "-c", f"{command} | {reader} > {tmp_path / 'seen.log'}"],
        cwd=tmp_path,
        env=clean_env(),
        start_new_session=True,  # a terminal's process group, to send Ctrl-C to
    )
    try:
        stack = announced()
        pids = [*stack["children"], redis_pid(stack)]
        assert all(alive(pid) for pid in pids)
        os.killpg(shell.pid, signal.SIGINT)
        shell.wait(60)
        wait_for(lambda: all_gone(pids), timeout=30)
        assert not (dev_dir() / "stack.json").exists()
        assert not alive(stack["pid"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(10)


def test_a_killed_dev_command_takes_its_children_with_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [GDS_NOTIFY, "dev", "--concurrency", "2", *dev_ports()],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stack = announced()
        pids = [*stack["children"], redis_pid(stack)]
        proc.kill()  # no cleanup of its own: the kernel's parent-death signal does it
        proc.wait(10)
        wait_for(lambda: all_gone(pids), timeout=30)
        # The next `make run` is not told that a stack is running.
        assert running_stack() is None
    finally:
        if proc.poll() is None:
            proc.kill()
        (dev_dir() / "stack.json").unlink(missing_ok=True)


def test_dev_env_without_a_stack_says_so_in_one_line() -> None:
    done = cli("dev", "--env")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("Error: no dev stack is running")
    assert done.stderr.count("\n") == 1


def test_the_stacks_processes_take_no_login_or_team_key_from_the_shell_or_env_file(
    tmp_path: Path,
) -> None:
    """A `.env` in the checkout may hold production's SMTP login and teams' routing keys:
    the sink would refuse the login, and a team's pages would carry its real key to the
    sandbox. Blanks in the environment win over the file, and blank is unset."""
    from cli.dev_stack import process_env
    from config.settings import load_settings

    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "SMTP_USERNAME=prod-mailer\nSMTP_PASSWORD=prod-secret\n"
        f"PAGERDUTY_ROUTING_KEY_DBA={'D' * 32}\n"
    )
    shell = {"PAGERDUTY_ROUTING_KEY_CORE": "C" * 32, "SMTP_HOST": "smtp.prod", "PATH": "/bin"}
    stack = {"PAGERDUTY_ROUTING_KEY": "S" * 32, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": "1025"}
    env = process_env(shell, stack, dotenv)
    assert env["SMTP_HOST"] == "127.0.0.1"
    assert env["PATH"] == "/bin"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # the processes read the .env of where they run
        for name in [n for n in os.environ if n.startswith(("SMTP_", "PAGERDUTY_"))]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = load_settings()
    assert (settings.smtp_username, settings.smtp_password) == (None, None)
    assert settings.pagerduty_team_routing_keys == {}
    assert settings.routing_key_for("dba").get_secret_value() == "S" * 32
