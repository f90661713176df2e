"""``gds-notify`` as a user runs it: a real process, real ports, Ctrl-C."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from tests.conftest import ROUTING_KEY, free_port

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def test_help_lists_the_sandbox_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "sandbox" in result.output
    sandbox_help = CliRunner().invoke(main, ["sandbox", "--help"])
    assert "--rate-limit" in sandbox_help.output
    assert "--fail-rate" in sandbox_help.output


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("banana", "'banana': expected STATUS=PROBABILITY, such as 503=0.3"),
        ("503=2", "'503=2': probability: Input should be less than or equal to 1"),
        ("99=0.5", "'99=0.5': status: Input should be greater than or equal to 100"),
    ],
)
def test_bad_fault_option_is_a_one_line_usage_error(value: str, says: str) -> None:
    result = CliRunner().invoke(main, ["sandbox", "--fail-rate", value])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert says in line
    assert "pydantic" not in line


def _wait_for(url: str, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_sandbox_command_serves_and_stops_cleanly_on_ctrl_c() -> None:
    port, smtp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            GDS_NOTIFY,
            "sandbox",
            "--port",
            str(port),
            "--smtp-port",
            str(smtp_port),
            "--rate-limit",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz")
        event = {
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "payload": {"summary": "cli test", "source": "t", "severity": "info"},
        }
        api = f"http://127.0.0.1:{port}/v2/enqueue"
        assert httpx.post(api, json=event).status_code == 202
        assert httpx.post(api, json=event).status_code == 429  # --rate-limit took effect
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: via cli\r\n\r\nhi\r\n")
        [message] = httpx.get(f"http://127.0.0.1:{port}/sandbox/messages").json()
        assert message["subject"] == "via cli"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v2/enqueue" in out
    assert "Traceback" not in err
    for used in (port, smtp_port):  # nothing listens any more: nothing left behind
        with socket.socket() as sock:
            # SO_REUSEADDR lets the bind ignore TIME_WAIT from our own client connections
            # while still failing if a listener is left on the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", used))
            sock.listen()


def test_taken_port_is_reported_in_one_clear_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [GDS_NOTIFY, "sandbox", "--port", str(port), "--smtp-port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ},
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_smtp_port_taken_is_reported_and_releases_the_web_port() -> None:
    web_port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        smtp_port = sock.getsockname()[1]
        result = subprocess.run(
            [GDS_NOTIFY, "sandbox", "--port", str(web_port), "--smtp-port", str(smtp_port)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1
    assert f"port {smtp_port} on 127.0.0.1 is already in use; pick another with --smtp-port" in (
        result.stderr
    )


def test_sink_options_must_come_in_pairs() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--smtp-user", "u"])
    assert result.exit_code == 2
    assert "--smtp-user and --smtp-password go together" in result.output


@pytest.mark.parametrize(
    "command", [["status"], ["dlq", "show"], ["dlq", "replay"], ["resolve"], ["ack"], ["heartbeat"]]
)
def test_an_argument_that_is_not_utf8_is_one_line_naming_it(command: list[str]) -> None:
    """A Latin-1 terminal's bytes: Python passes them on as lone surrogates, and each of
    these commands ended in a UnicodeEncodeError traceback."""
    done = subprocess.run(
        [GDS_NOTIFY, *command, b"caf\xe9"],
        capture_output=True,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},  # never reached
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.decode().splitlines()
    assert line.endswith(
        "b'caf\\xe9' is not UTF-8 text (convert it first, e.g. with iconv -f latin1 -t utf-8)"
    )


def test_a_file_name_that_is_not_utf8_is_still_a_file_name(tmp_path: Path) -> None:
    """A path is the file system's bytes: `api --ssl-keyfile` took one before the check of
    text arguments, and still does; the same bytes as text are refused."""
    import click

    from cli.common import one_line_errors

    @click.command()
    @click.argument("name")
    @click.option("--key-file", type=click.Path(exists=True))
    @one_line_errors
    def command(name: str, key_file: str | None) -> None:
        click.echo(f"{name} {key_file is not None}")

    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.key")
    Path(odd).write_text("k")
    taken = CliRunner().invoke(command, ["fine", "--key-file", odd])
    assert (taken.exit_code, taken.stdout) == (0, "fine True\n")
    refused = CliRunner().invoke(command, [odd])
    assert refused.exit_code == 2
    assert "NAME: " in refused.stderr
    assert "is not UTF-8 text" in refused.stderr
