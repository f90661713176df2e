"""What a new user meets in the first hour, done the way they do it: ``gds-notify`` run as a
program (a subprocess, its stdout and stderr as a terminal shows them), against a real
Redis, an in-thread worker, the sandbox and the SMTP sink. Finding a page's dedup key and
the command that resolves it, a job dropped as a duplicate, dead letters by job id, the
recent jobs; one-line errors; a team with no key of its own; ``config check``'s report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from sandbox import SandboxServer
from tests.conftest import SandboxClient, wait_for
from tests.processes import WorkerProcess
from worker.engine.heartbeats.paging import run_check
from worker.engine.runtime import engine

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))
ROOT = Path(__file__).resolve().parent.parent


def gds(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``gds-notify ARGS`` in a terminal whose environment holds the test's settings."""
    return subprocess.run(
        [GDS_NOTIFY, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def pages(service_env: SandboxServer) -> Any:
    client = SandboxClient(service_env)
    yield client
    client.close()


def test_usage_errors_are_one_line_with_the_way_to_help(service_env: SandboxServer) -> None:
    cases = [
        (("send", "db-1", "Disk", "--priority", "urgent"), 2, "'urgent' is not one of"),
        (("send", "db-1", "Disk", "--channel", "sms"), 2, "'sms' is not one of"),
        (("send", "a@example.com", "Report", "--body-file", "nope.txt"), 2, "nope.txt"),
        (("dlq", "replay", "bogus-id"), 1, "no dead letter 'bogus-id'"),
        (("stauts", "x"), 2, "No such command 'stauts'"),
    ]
    for argv, code, says in cases:
        done = gds(*argv)
        assert (done.returncode, done.stdout) == (code, ""), argv
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("Error: "), done.stderr
        assert says in done.stderr, done.stderr
    usage = gds("send", "db-1", "Disk", "--priority", "urgent").stderr
    assert usage.rstrip().endswith("(see `gds-notify send --help`)")


def test_a_component_without_a_paging_priority_is_told_how_to_page(
    service_env: SandboxServer,
) -> None:
    done = gds("send", "db-prod-01", "Disk full")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "recipient: 'db-prod-01'" in done.stderr
    assert "priority normal is sent by email" in done.stderr
    assert "priority critical or emergency" in done.stderr
    assert "give it a ROUTING_RULES rule with an email_to" in done.stderr  # or mail someone


def test_an_alert_that_misses_the_rule_naming_its_recipients_is_told_why(
    service_env: SandboxServer,
) -> None:
    rules = (
        '[{"alert_name": "DiskFull", "db_instance_id": [42, 43], "channels": ["email"],'
        ' "email_to": "dba@example.com"}]'
    )
    done = gds(
        "send",
        "db-prod-01",
        "disk",
        "--alert-name",
        "DiskFull",
        "--db-instance-id",
        "42x",
        ROUTING_RULES=rules,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "recipient: 'db-prod-01'" in done.stderr
    assert (
        "the routing rule for alert 'DiskFull' did not match: db_instance_id '42x' is not "
        "one of [42, 43]"
    ) in done.stderr
    assert "priority normal is sent by email" not in done.stderr  # not the cause here


def test_a_page_names_its_dedup_key_and_the_command_that_resolves_it(
    celery_worker: Any, pages: SandboxClient
) -> None:
    sent = gds("send", "db-prod-01", "Disk full", "-p", "critical", "--team", "dba", "--wait")
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.split()[0]
    [incident] = pages.incidents()
    key = incident["dedup_key"]
    assert f"queued for pagerduty (dedup key {key})" in sent.stderr
    hint = next(line for line in sent.stderr.splitlines() if "resolves it" in line)
    command = hint.split("`")[1]
    # Named as this shell finds it: by name when the PATH leads to it, else by its path.
    on_path = shutil.which("gds-notify") == GDS_NOTIFY
    assert command == f"{'gds-notify' if on_path else GDS_NOTIFY} resolve {key} --team dba"

    status = gds("status", job_id)
    assert f"dedup key  {key}" in status.stdout

    # The next step, run as printed by the shell that printed it.
    resolved = subprocess.run(
        ["bash", "-c", f"{command} --wait"],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert resolved.returncode == 0, resolved.stderr
    assert pages.incidents()[0]["status"] == "resolved"


def test_status_answers_for_a_copy_dropped_as_a_duplicate(
    celery_worker: Any, pages: SandboxClient
) -> None:
    job = {
        "recipient": "db-prod-01",
        "subject": "Disk full",
        "priority": "critical",
        "idempotency_id": "disk-db-prod-01",
    }
    client = Celery(broker=os.environ["REDIS_URL"])
    try:
        client.send_task("notify", args=[job], task_id="first-copy")
        wait_for(lambda: (r := engine().jobs.get("first-copy")) and r["status"] == "delivered")
        client.send_task("notify", args=[job], task_id="second-copy")
        wait_for(lambda: engine().jobs.get("first-copy")["duplicates"] == 1)  # type: ignore[index]
    finally:
        client.close()
    shown = gds("status", "second-copy")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(
        "second-copy was dropped: a copy of job first-copy (same idempotency id)"
    )
    assert "job        first-copy  [delivered]" in shown.stdout
    as_json = json.loads(gds("status", "second-copy", "--json").stdout)
    assert (as_json["id"], as_json["duplicate"]) == ("first-copy", "second-copy")
    assert len(pages.incidents()) == 1


def test_dead_letters_are_found_by_job_id_and_named_by_status(
    celery_worker: Any, pages: SandboxClient
) -> None:
    pages.faults({"status": 400})
    sent = gds("send", "db-9", "Bad page", "-p", "critical", "--wait")
    assert sent.returncode == 1
    assert "dead-lettered: see `gds-notify status" in sent.stdout
    assert "NotificationDeliveryError" in sent.stderr
    job_id = sent.stdout.split()[0]
    entry = f"{job_id}-pagerduty"

    status = gds("status", job_id)
    assert f"dead letter {entry} (`gds-notify dlq show {entry}`)" in status.stdout
    by_job = json.loads(gds("dlq", "show", job_id).stdout)
    by_entry = json.loads(gds("dlq", "show", entry).stdout)
    assert by_job == by_entry
    assert by_job["job_id"] == job_id

    replayed = gds("dlq", "replay", job_id)
    assert replayed.returncode == 0, replayed.stderr
    new_job = replayed.stdout.split()[-1]
    wait_for(lambda: (r := engine().jobs.get(new_job)) and r["status"] == "delivered")
    gone = gds("dlq", "show", job_id)
    assert gone.returncode == 1
    assert "a replay or a purge removes it" in gone.stderr
    # The job's own status no longer sends one to a dead letter that is not there: it
    # names the job the letter was replayed as.
    assert f"dead letter {entry}: replayed as job {new_job}" in gds("status", job_id).stdout
    as_json = json.loads(gds("status", job_id, "--json").stdout)
    assert as_json["channels"]["pagerduty"]["replayed_as"] == new_job


def test_jobs_lists_the_newest_first_with_each_channels_state(
    celery_worker: Any, pages: SandboxClient
) -> None:
    first = gds("send", "oncall@example.com", "Nightly report", "--wait").stdout.split()[0]
    second = gds("send", "db-1", "Disk full", "-p", "critical", "--wait").stdout.split()[0]
    listed = gds("jobs")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [second, first]
    assert "pagerduty delivered" in lines[0]
    assert "Disk full" in lines[0]
    assert "email delivered" in lines[1]
    assert "Nightly report" in lines[1]
    assert gds("jobs", "--status", "dead-lettered").stdout == "no jobs dead-lettered\n"
    as_json = json.loads(gds("jobs", "--limit", "1", "--json").stdout)
    assert [j["id"] for j in as_json] == [second]


def test_a_team_without_its_own_key_is_told_which_key_pages_for_it(
    celery_worker: Any, pages: SandboxClient
) -> None:
    sent = gds("send", "db-1", "Disk full", "-p", "critical", "--team", "ops", "--wait")
    assert sent.returncode == 0
    assert (
        "note: PAGERDUTY_ROUTING_KEY_OPS is not set here: team ops's pages use "
        "PAGERDUTY_ROUTING_KEY"
    ) in sent.stderr
    own = gds("send", "db-1", "Disk full", "-p", "critical", "--team", "dba")
    assert "note:" not in own.stderr
    spaced = gds("send", "db-1", "Disk full", "-p", "critical", "--team", "no such")
    assert spaced.returncode == 0
    assert (  # no variable a shell can set would name it
        "note: team 'no such' cannot have a routing key of its own (PAGERDUTY_ROUTING_KEY_<TEAM> "
        "takes letters, digits, - and _): its pages use PAGERDUTY_ROUTING_KEY"
    ) in spaced.stderr

    fallback = gds("pagerduty-test", "--team", "ops")
    assert fallback.returncode == 0, fallback.stderr
    assert "routing key   PAGERDUTY_ROUTING_KEY …0001 (team ops has no key of its own)" in (
        fallback.stdout
    )
    dba = gds("pagerduty-test", "--team", "dba")
    assert "routing key   PAGERDUTY_ROUTING_KEY_DBA …DBA1" in dba.stdout


def test_config_check_is_a_report_without_log_lines(service_env: SandboxServer) -> None:
    broken = gds("config", "check", SMTP_PORT="1", PAGERDUTY_API_URL="http://127.0.0.1:9/v2")
    assert broken.returncode == 1
    report = broken.stdout.splitlines()
    assert [line.split()[:2] for line in report[-3:]] == [
        ["redis", "ok"],
        ["pagerduty", "FAILED"],
        ["smtp", "FAILED"],
    ]
    assert "WARNING" not in broken.stdout + broken.stderr
    assert broken.stderr == ""

    no_key = {k: v for k, v in os.environ.items() if not k.startswith("PAGERDUTY_ROUTING_KEY")}
    offline = subprocess.run(
        [GDS_NOTIFY, "config", "check", "--offline"],
        env=no_key,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 0
    assert offline.stderr == (
        "warning: PAGERDUTY_ROUTING_KEY is not set: only teams with a "
        "PAGERDUTY_ROUTING_KEY_<TEAM> of their own can page\n"
    )


def test_heartbeats_names_a_catalogue_the_worker_does_not_have(
    service_env: SandboxServer,
) -> None:
    # The worker and beat run without HEARTBEAT_SERVICES_FILE: their checks find nothing.
    assert run_check(engine()) is None
    shown = gds("heartbeats", HEARTBEAT_SERVICES_FILE=str(ROOT / "services.example.toml"))
    assert shown.returncode == 0, shown.stderr
    last = shown.stdout.strip().splitlines()[-1]
    assert "HEARTBEAT_SERVICES_FILE is set here but not for the worker and beat" in last
    assert "HEARTBEAT_SERVICES_FILE=FILE make run" in last


def test_a_page_worker_with_no_routing_key_says_so_when_it_starts(
    service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every page it took would be dead-lettered; without this, the first one says why."""
    for name in [n for n in os.environ if n.startswith("PAGERDUTY_ROUTING_KEY")]:
        monkeypatch.delenv(name)
    said = "no PAGERDUTY_ROUTING_KEY (nor any PAGERDUTY_ROUTING_KEY_<TEAM>) is set"
    for queues, warned in (("pagerduty,celery", True), ("email", False)):
        log = tmp_path / f"{queues}.log"
        worker = WorkerProcess(log, "-P", "threads", "-c", "1", "-Q", queues).start()
        worker.stop()
        assert (said in log.read_text()) is warned, log.read_text()[-2000:]


def test_a_terminal_left_on_a_restarted_dev_stacks_redis_is_told_so(tmp_path: Path) -> None:
    """`eval "$(gds-notify dev --env)"` exported the stack's REDIS_URL; the stack was then
    restarted on another port. The environment wins, so the error says what happened."""
    from tests.conftest import free_port

    stack = {"pid": os.getpid(), "env": {"REDIS_URL": "redis://127.0.0.1:6399/0"}}
    (tmp_path / "stack.json").write_text(json.dumps(stack))
    exported = f"redis://127.0.0.1:{free_port()}/0"
    done = gds("send", "you@example.com", "hi", REDIS_URL=exported, GDS_DEV_DIR=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"Error: cannot reach Redis at {exported}")
    assert done.stderr.rstrip().endswith(
        "REDIS_URL is set in your environment, and the dev stack running here is at "
        'redis://127.0.0.1:6399/0: run `eval "$(gds-notify dev --env)"` again, or unset REDIS_URL'
    )
    # With no stack running, or the stack's own address exported, nothing is guessed.
    (tmp_path / "stack.json").unlink()
    alone = gds("send", "you@example.com", "hi", REDIS_URL=exported, GDS_DEV_DIR=str(tmp_path))
    assert "dev stack" not in alone.stderr
