"""The sandbox page as a person sees it: real Chromium, headless, in a 1280-pixel window,
fed by real HTTP and SMTP."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from sandbox import EmulatorOptions, SandboxServer
from tests.browser import CHROMIUM, page_width, screenshot
from tests.conftest import ROUTING_KEY

WIDTH = 1280


@pytest.fixture
def page_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(options=EmulatorOptions(rate_limit=0), smtp_port=0) as server:
        yield server


def _trigger(http: httpx.Client, dedup_key: str, summary: str, source: str = "db-1") -> None:
    event = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": summary, "source": source, "severity": "error"},
    }
    assert http.post("/v2/enqueue", json=event).status_code == 202


def _mail(
    server: SandboxServer, subject: str, to: str = "oncall@example.com", text: str = "hi"
) -> None:
    message = EmailMessage()
    message["From"] = "gds@example.com"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    assert server.smtp_port is not None
    with smtplib.SMTP(server.host, server.smtp_port, timeout=10) as client:
        client.send_message(message)


def test_long_unbroken_values_keep_the_page_within_the_window(
    page_sandbox: SandboxServer, tmp_path: Path
) -> None:
    dedup_key = "dedup-" + "k" * 249  # the longest PagerDuty takes, with no break in it
    with httpx.Client(base_url=page_sandbox.url, timeout=10) as http:
        _trigger(http, dedup_key, "S" * 1024, source="host-" + "h" * 2000)
        _mail(page_sandbox, "X" * 3000, to="a" * 300 + "@example.com", text="T" * 3000)
        assert http.get("/sandbox/messages").json()[0]["subject"] == "X" * 3000
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    shot = screenshot(page_sandbox.url + "/", tmp_path / "sandbox.png", tmp_path, width=WIDTH)
    assert shot.read_bytes().startswith(b"\x89PNG")
    width, dom = page_width(page_sandbox.url + "/", tmp_path, width=WIDTH)
    assert width <= WIDTH
    assert dedup_key in dom
    assert "Dedup key" in dom
    assert "Timeline" in dom


def test_counts_on_the_page_agree_with_their_number(page_sandbox: SandboxServer) -> None:
    with httpx.Client(base_url=page_sandbox.url, timeout=10) as http:
        http.post("/sandbox/settings", json={"rate_limit": 1}).raise_for_status()
        _trigger(http, "k1", "Disk full")
        _mail(page_sandbox, "Nightly report")
        one = http.get("/").text
        http.post("/sandbox/settings", json={"rate_limit": 2}).raise_for_status()
        _trigger(http, "k1", "Disk full")
        _mail(page_sandbox, "Nightly report")
        two = http.get("/").text
    for singular in (
        "1 request received",
        "1 event per 60s",
        "1 event<",
        "1 alert<",
        "1 message ·",
    ):
        assert singular in one
    for plural in (
        "2 requests received",
        "2 events per 60s",
        "2 events<",
        "2 alerts<",
        "2 messages ·",
    ):
        assert plural in two
    assert not any(f"1 {noun}s" in one + two for noun in ("request", "event", "alert", "message"))
