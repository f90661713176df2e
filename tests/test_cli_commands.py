"""``gds-notify send / ack / resolve / config check / pagerduty-test`` against a real
Redis, worker, sandbox and SMTP sink."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tasks
from cli.main import main
from sandbox import SandboxServer
from tests.conftest import ROUTING_KEY, SMTP_PASSWORD, TEAM_KEY, SandboxClient, reconfigure
from worker.engine.runtime import engine
from worker.exceptions import InvalidJobError
from worker.notification import Notification
from worker.redact import mask

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def api(service_env: SandboxServer) -> Any:
    client = SandboxClient(service_env)
    yield client
    client.close()


def test_every_command_has_help() -> None:
    commands = [
        "send",
        "ack",
        "resolve",
        "status",
        "dlq",
        "heartbeat",
        "heartbeats",
        "sandbox",
        "dev",
        "schema",
        "config",
        "pagerduty-test",
    ]
    top = run("--help")
    for name in commands:
        assert f"  {name}" in top.output
        result = run(name, "--help")
        assert result.exit_code == 0
        assert "Usage: main " + name in result.output or "Usage: " in result.output


def test_send_carries_every_field_and_waits_for_delivery(
    celery_worker: Any, api: SandboxClient
) -> None:
    result = run(
        "send",
        "db-prod-01",
        "Replica lag",
        "--body",
        "lag 40 s",
        "--priority",
        "CRITICAL",
        "--alert-name",
        "ReplicaLag",
        "--db-instance-id",
        "42",
        "--idempotency-id",
        "cli-1",
        "--meta",
        "region=eu-west-1",
        "--meta",
        "lag_seconds=40",
        "--metadata",
        '{"links": [{"href": "https://runbooks.example/lag"}]}',
        "--team",
        "dba",
        "--wait",
    )
    assert result.exit_code == 0, result.output
    job_id = result.stdout.split()[0]
    assert f"job {job_id} queued for pagerduty" in result.stderr
    assert result.stdout.strip() == f"{job_id} delivered"
    [incident] = api.incidents()
    assert incident["routing_key"] == mask(TEAM_KEY)
    event = api.events()[-1]["body"]
    assert event["dedup_key"] == "cli-1"
    assert event["links"] == [{"href": "https://runbooks.example/lag"}]
    payload = event["payload"]
    assert payload["class"] == "ReplicaLag"
    details = payload["custom_details"]
    assert details["region"] == "eu-west-1"
    assert details["lag_seconds"] == 40
    assert details["db_instance_id"] == "42"
    assert details["body"] == "lag 40 s"

    again = run(
        "send",
        "db-prod-01",
        "Replica lag",
        "--priority",
        "critical",
        "--idempotency-id",
        "cli-1",
        "--wait",
    )
    assert again.exit_code == 0
    assert f"deduplicated: same idempotency id as job {job_id}" in again.stderr
    # Without --wait too: the id printed is the first job's, and that is said.
    quiet = run(
        "send", "db-prod-01", "Replica lag 2", "-p", "critical", "--idempotency-id", "cli-1"
    )
    assert quiet.exit_code == 0
    assert quiet.stdout.strip() == job_id
    assert f"note: same idempotency id as job {job_id}, accepted before: nothing new" in (
        quiet.stderr
    )
    fresh = run("send", "db-prod-01", "Other", "-p", "critical", "--idempotency-id", "cli-2")
    assert "same idempotency id" not in fresh.stderr
    assert len(api.events()) >= 1
    assert sum(1 for e in api.events() if e["body"].get("dedup_key") == "cli-1") == 1


def test_send_email_with_html_and_the_job_id_for_scripts(
    celery_worker: Any, api: SandboxClient
) -> None:
    result = run(
        "send", "ops@example.com", "Report", "--body", "text", "--html", "<b>html</b>", "--wait"
    )
    assert result.exit_code == 0, result.output
    [message] = api.messages()
    assert message["rcpt_tos"] == ["ops@example.com"]
    assert "<b>html</b>" in str(message)
    quiet = run("send", "ops@example.com", "Report 2")
    assert quiet.exit_code == 0
    assert len(quiet.stdout.strip()) == 32  # just the job id, for $(...)
    assert "no worker" not in quiet.stderr


def test_send_with_no_worker_serving_its_queue_says_where_the_job_waits(
    service_env: SandboxServer,
) -> None:
    """A newcomer's first `send` before `make run`: the default REDIS_URL takes the job."""
    sent = run("send", "db-1", "Disk full", "--priority", "critical")
    assert sent.exit_code == 0
    assert len(sent.stdout.strip()) == 32
    assert "note: no worker is serving pagerduty: the job waits in Redis at redis" in sent.stderr
    resolved = run("resolve", "some-incident")
    assert "note: no worker is serving pagerduty" in resolved.stderr


def test_send_refuses_bad_input_naming_the_field(
    service_env: SandboxServer, tmp_path: Path
) -> None:
    blank = run("send", "db-1", " ")
    assert blank.exit_code == 2
    assert blank.output.strip() == "Error: invalid notification: subject: must not be blank"
    bad_meta = run("send", "db-1", "x", "--meta", "novalue")
    assert bad_meta.exit_code == 2
    assert "--meta: expected KEY=VALUE" in bad_meta.output
    bad_mail = run("send", "not-an-address", "x")
    assert bad_mail.exit_code == 2
    assert "recipient" in bad_mail.output
    body = tmp_path / "body.txt"
    body.write_text("from the file")
    two_bodies = run("send", "ops@example.com", "x", "--body", "typed", "--body-file", str(body))
    assert two_bodies.exit_code == 2
    assert two_bodies.output.startswith(
        "Error: --body and --body-file both give the body: use one of them"
    )
    assert len(two_bodies.output.strip().splitlines()) == 1
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 closed")
    not_utf8 = run("send", "ops@example.com", "x", "--body-file", str(latin))
    deep = "[" * 5000 + "]" * 5000
    too_deep = run("send", "ops@example.com", "x", "--metadata", f'{{"a": {deep}}}')
    too_deep_meta = run("send", "ops@example.com", "x", "--meta", f"a={deep}")
    assert not_utf8.exit_code == too_deep.exit_code == too_deep_meta.exit_code == 2
    assert not_utf8.output.startswith("Error: --body-file: not UTF-8 text (byte 0xe9 at offset 3)")
    assert too_deep.output == "Error: --metadata: nested deeper than JSON is read here\n"
    assert too_deep_meta.output == "Error: --meta a: nested deeper than JSON is read here\n"
    huge = tmp_path / "huge.log"  # a stray log file as the body
    huge.write_text("x" * (3 * 1_048_576))
    too_long = run("send", "ops@example.com", "x", "--body-file", str(huge))
    assert too_long.exit_code == 2
    assert too_long.output.startswith(
        "Error: --body-file: more than 1048576 characters, the most a body may hold"
    )
    # Read no further than that: an endless stdin is refused, not read to its end.
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        endless = subprocess.run(
            [GDS_NOTIFY, "send", "ops@example.com", "x", "--body-file", "-"],
            stdin=yes.stdout,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        yes.kill()
        yes.wait()
        if yes.stdout is not None:
            yes.stdout.close()
    assert endless.returncode == 2, endless.stderr[-300:]
    assert "--body-file: more than 1048576 characters" in endless.stderr
    assert list(engine().redis.scan_iter("gds:job:*")) == []  # nothing queued
    with pytest.raises(InvalidJobError, match="body_html: must be at most 1048576 characters"):
        tasks.enqueue(
            Notification(recipient="ops@example.com", subject="x", body_html="x" * 1_048_577)
        )
    huge.write_text("x" * 1_048_576)  # the most a body may be: it goes
    assert run("send", "ops@example.com", "x", "--body-file", str(huge)).exit_code == 0


def test_ack_and_resolve_go_through_the_queue(celery_worker: Any, api: SandboxClient) -> None:
    assert (
        run(
            "send", "db-1", "Down", "--priority", "critical", "--idempotency-id", "inc-7", "--wait"
        ).exit_code
        == 0
    )
    acked = run("ack", "inc-7", "--wait")
    assert acked.exit_code == 0, acked.output
    assert api.incidents()[0]["status"] == "acknowledged"
    resolved = run("resolve", "inc-7", "--wait")
    assert resolved.exit_code == 0, resolved.output
    assert api.incidents()[0]["status"] == "resolved"
    assert [e["body"]["event_action"] for e in api.events()] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]


def test_config_check_masks_secrets_and_checks_every_peer(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import get_settings

    monkeypatch.setenv("SMTP_USERNAME", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("SMTP_PORT", str(service_env.smtp_port))
    get_settings.cache_clear()
    result = run("config", "check")
    out = result.output
    assert ROUTING_KEY not in out
    assert TEAM_KEY not in out
    assert SMTP_PASSWORD not in out
    assert re.search(rf"^PAGERDUTY_ROUTING_KEY +{re.escape(mask(ROUTING_KEY))}$", out, re.M)
    assert f"dba={mask(TEAM_KEY)}" in out
    # Values as the settings are written: true/false, and auto for STARTTLS when offered.
    assert re.search(r"^SMTP_USE_TLS +false$", out, re.M)
    assert re.search(r"^SMTP_STARTTLS +(auto|true|false)$", out, re.M)
    assert "False" not in out
    assert "True" not in out
    assert "redis      ok" in out
    assert "pagerduty  ok" in out
    # The sandbox sink here offers no AUTH, so logging in fails: reported, not crashed.
    assert "smtp       FAILED" in out
    assert result.exit_code == 1


def test_config_check_reports_unreachable_peers_and_bad_settings(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import get_settings
    from tests.conftest import closed_port_url, free_port

    monkeypatch.setenv("PAGERDUTY_API_URL", closed_port_url())
    monkeypatch.setenv("SMTP_PORT", str(free_port()))
    get_settings.cache_clear()
    result = run("config", "check")
    assert result.exit_code == 1
    assert "pagerduty  FAILED  ConnectError" in result.output
    assert "smtp       FAILED  NotificationConnectionError" in result.output
    assert "redis      ok" in result.output

    # A server that answers, but not as the Events API: a path mistyped (it passed, as any
    # answer below 500 did).
    monkeypatch.setenv("PAGERDUTY_API_URL", service_env.api_url.replace("/v2/enqueue", "/v2/nope"))
    get_settings.cache_clear()
    wrong_path = run("config", "check")
    assert wrong_path.exit_code == 1
    assert "pagerduty  FAILED" in wrong_path.output
    assert "to an empty event, where the Events API v2 answers 400" in wrong_path.output

    monkeypatch.setenv("PAGERDUTY_API_URL", closed_port_url().replace("//", "//u:hunter2pass@"))
    get_settings.cache_clear()
    with_credentials = run("config", "check")
    assert "hunter2pass" not in with_credentials.output
    assert re.search(r"^PAGERDUTY_API_URL +http://…@127\.0\.0\.1:", with_credentials.output, re.M)

    monkeypatch.setenv("PAGERDUTY_TIMEOUT", "-1")
    get_settings.cache_clear()
    bad = run("config", "check")
    assert bad.exit_code == 2
    assert bad.output.startswith("Error: invalid configuration: PAGERDUTY_TIMEOUT: ")


def test_config_check_shows_the_data_timeout_in_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SMTP_DATA_TIMEOUT below SMTP_TIMEOUT is raised to it: the check says so rather than
    show a value no worker uses."""
    from config.settings import get_settings

    monkeypatch.setenv("SMTP_TIMEOUT", "60")
    monkeypatch.setenv("SMTP_DATA_TIMEOUT", "10")
    get_settings.cache_clear()
    raised = run("config", "check", "--offline")
    monkeypatch.setenv("SMTP_DATA_TIMEOUT", "120")
    get_settings.cache_clear()
    kept = run("config", "check", "--offline")
    get_settings.cache_clear()
    assert raised.exit_code == kept.exit_code == 0
    [line] = [line for line in raised.output.splitlines() if line.startswith("SMTP_DATA_TIMEOUT")]
    assert line.split(None, 1)[1] == "10.0 (in effect 60: never less than SMTP_TIMEOUT)"
    [line] = [line for line in kept.output.splitlines() if line.startswith("SMTP_DATA_TIMEOUT")]
    assert line.split(None, 1)[1] == "120.0"


def test_config_check_warns_of_the_env_templates_placeholder_passwords(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`change-me`, as `.env.example` ships it, passes compose's `:?` checks: config check
    says which secrets still hold it."""
    from config.settings import get_settings

    monkeypatch.chdir(tmp_path)
    sentinels = "redis+sentinel://:change-me@127.0.0.1:26379,127.0.0.1:26380/gds/0"
    monkeypatch.setenv("REDIS_URL", sentinels)
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "change-me-too")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:change-me")
    get_settings.cache_clear()
    placeholders = run("config", "check", "--offline")
    monkeypatch.setenv("REDIS_URL", "redis://:k7Vq9wX2pL@127.0.0.1:6379/0")
    monkeypatch.delenv("REDIS_SENTINEL_PASSWORD")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:k7Vq9wX2pL")
    get_settings.cache_clear()
    own = run("config", "check", "--offline")
    get_settings.cache_clear()
    assert placeholders.exit_code == own.exit_code == 0
    warned = [line for line in placeholders.output.splitlines() if "placeholder" in line]
    names = [line.split()[1] for line in warned]
    assert names == ["REDIS_URL", "REDIS_SENTINEL_PASSWORD", "FLOWER_BASIC_AUTH"]
    assert "placeholder" not in own.output
    # Flower's login in .env alone (honcho and compose hand it to Flower, not to us).
    monkeypatch.delenv("FLOWER_BASIC_AUTH")
    (tmp_path / ".env").write_text("FLOWER_BASIC_AUTH=ops:change-me\n")
    get_settings.cache_clear()
    in_file = run("config", "check", "--offline")
    get_settings.cache_clear()
    assert "FLOWER_BASIC_AUTH holds the placeholder" in in_file.output, in_file.output


def test_pagerduty_test_triggers_and_resolves_with_the_configured_key(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    result = run("pagerduty-test")
    assert result.exit_code == 0, result.output
    assert "trigger accepted" in result.output
    assert "resolve accepted" in result.output
    [incident] = api.incidents()
    assert incident["status"] == "resolved"
    assert incident["routing_key"] == mask(ROUTING_KEY)
    assert ROUTING_KEY not in result.output


def test_pagerduty_test_reports_an_invalid_key(
    service_env: SandboxServer, api: SandboxClient
) -> None:
    api.settings(strict_keys=[TEAM_KEY])
    result = run("pagerduty-test")
    assert result.exit_code == 1
    assert "PagerDuty test failed" in result.output
    assert "Invalid routing key" in result.output
    assert ROUTING_KEY not in result.output
    assert run("pagerduty-test", "--team", "dba").exit_code == 0


def test_a_job_no_replica_confirmed_is_named_with_how_to_look_it_up(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDIS_MIN_REPLICAS asks for a replica this Redis does not have: the job is written
    on the master but not acknowledged. The producer was given no job id, so the error
    names it, and how to tell whether it stood."""
    monkeypatch.setenv("REDIS_MIN_REPLICAS", "1")
    monkeypatch.setenv("REDIS_WAIT_TIMEOUT", "0.1")
    reconfigure()
    sent = run("send", "ops@example.com", "Nightly report")
    assert sent.exit_code == 1
    [line] = sent.output.strip().splitlines()
    assert "confirmed by 0 of the 1 replicas" in line
    job_id = re.search(r"job (\w+) is on the master: `gds-notify status (\w+)`", line)
    assert job_id is not None, line
    assert job_id.group(1) == job_id.group(2)
    assert engine().jobs.get(job_id.group(1)) is not None
