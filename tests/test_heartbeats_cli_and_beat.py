"""``gds-notify heartbeat`` / ``heartbeats``, ``celery -A worker beat`` driving the checker,
and a bad catalogue stopping the worker and scheduler at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from sandbox.server import SandboxServer
from tests.conftest import SandboxClient, wait_for
from tests.heartbeat_helpers import WriteCatalogue, service
from tests.processes import CELERY, ROOT, beat
from worker.engine.messages import check_message
from worker.engine.runtime import engine

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_heartbeat_and_heartbeats_commands(catalogue: WriteCatalogue) -> None:
    catalogue(service("billing-api", window=60, team="payments") + service("etl", window=60))
    ok = run("heartbeat", "billing-api")
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("heartbeat billing-api up at ")
    queue, _ = check_message()
    assert engine().redis.llen(queue) == 0
    assert run("heartbeat", "etl", "--fail", "--at", "2026-01-01T00:00:00Z").exit_code == 0
    # A reported failure asks for a check at once, through this door too (one, however
    # many failures arrive within the second).
    assert engine().redis.llen(queue) == 1
    assert run("heartbeat", "etl", "--fail", "--at", "2026-01-01T00:00:00Z").exit_code == 0
    assert engine().redis.llen(queue) == 1

    unknown = run("heartbeat", "ghost")
    assert unknown.exit_code == 2
    assert unknown.output.strip() == (
        "Error: slug: unknown service 'ghost': not in the heartbeat catalogue (2 services); "
        "heartbeat refused"
    )
    bad_at = run("heartbeat", "etl", "--at", "yesterday")
    assert bad_at.exit_code == 2
    assert "at: must be an ISO 8601 time or epoch seconds" in bad_at.output

    table = run("heartbeats")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "SLUG",
        "TEAM",
        "PRI",
        "STATE",
        "LAST",
        "HEARTBEAT",
        "IN",
        "WINDOW",
        "INCIDENT",
    ]
    billing = next(line for line in lines if line.startswith("billing-api"))
    assert " payments " in billing
    assert " new " in billing
    assert " 1/1 " in billing
    etl = next(line for line in lines if line.startswith("etl"))
    assert "2026-01-01 00:00:00.000Z fail" in etl
    assert " 0/1 " in etl
    assert (
        "2 services; last check never: no check has run (is `celery -A worker beat` running?)"
        in (table.output)
    )
    assert "refused heartbeats: invalid 1, unknown_slug 1" in table.output

    as_json = json.loads(run("heartbeats", "--json").output)
    assert [s["slug"] for s in as_json["services"]] == ["billing-api", "etl"]
    assert as_json["services"][1]["last_status"] == "fail"
    assert as_json["refused"] == {"unknown_slug": 1, "invalid": 1}


def test_heartbeats_shows_an_open_incident(
    catalogue: WriteCatalogue, celery_worker: Any, service_env: SandboxServer
) -> None:
    from worker.engine.heartbeats.paging import run_check
    from worker.engine.runtime import engine

    catalogue(service("api", window=0.3))
    api = SandboxClient(service_env)
    try:
        wait_for(lambda: run_check(engine()) and api.incidents(), interval=0.1)
    finally:
        api.close()
    table = run("heartbeats").output
    api_line = next(line for line in table.splitlines() if line.startswith("api"))
    assert " down " in api_line
    assert "medic-heartbeat-api" in api_line


def test_heartbeats_without_a_catalogue_is_a_clear_error(service_env: SandboxServer) -> None:
    result = run("heartbeats")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: heartbeat monitoring is not configured: HEARTBEAT_SERVICES_FILE is not set "
        "and no service is registered"
    )


def test_the_shell_command_records_a_heartbeat(catalogue: WriteCatalogue) -> None:
    from worker.engine.heartbeats.store import HeartbeatStore
    from worker.engine.runtime import engine

    catalogue(service("cron-job", window=60))
    done = subprocess.run(
        [GDS_NOTIFY, "heartbeat", "cron-job"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert HeartbeatStore(engine().redis).last()["cron-job"].status == "up"
    refused = subprocess.run(
        [GDS_NOTIFY, "heartbeat", "nope"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1  # one line, no traceback


def test_beat_schedules_the_checker_that_pages_a_silent_service(
    catalogue: WriteCatalogue, celery_worker: Any, service_env: SandboxServer, tmp_path: Path
) -> None:
    catalogue(service("quiet", window=0.5))
    api = SandboxClient(service_env)
    try:
        with beat(tmp_path, HEARTBEAT_CHECK_INTERVAL="0.3") as log:
            [incident] = wait_for(lambda: api.incidents(), timeout=30)
            assert incident["dedup_key"] == "medic-heartbeat-quiet"
    finally:
        api.close()
    assert b"Sending due task heartbeat-check (heartbeat.check)" in log.read_bytes()


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_a_bad_catalogue_stops_the_worker_and_scheduler_at_start(
    command: str, tmp_path: Path, redis_url: str
) -> None:
    bad = tmp_path / "services.toml"
    bad.write_text(service("billing-api", window=60).replace("window = 60", 'window = "soon"'))
    env = {**os.environ, "HEARTBEAT_SERVICES_FILE": str(bad), "REDIS_URL": redis_url}
    argv = [CELERY, "-A", "worker", command, "-l", "INFO"]
    if command == "beat":
        argv += ["-s", str(tmp_path / "schedule")]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "services.billing-api.window: must be a duration" in done.stdout + done.stderr
