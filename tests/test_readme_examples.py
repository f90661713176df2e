"""The README's PagerDuty examples run as written, in order, against the sandbox."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import get_settings
from sandbox import EmulatorOptions, SandboxServer
from tests.conftest import SandboxClient

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
