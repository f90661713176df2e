"""``LOG_FORMAT=json`` as an operator runs it: a real ``celery -A worker worker`` that pages
through the sandbox, ``celery -A worker beat``, ``gds-notify api`` and ``gds-notify -v``,
each writing one JSON object per line, and delivery lines carrying their fields. A bad
``LOG_FORMAT`` stops each of them in one line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import tasks
from config.api_tokens import token_hash
from config.log_format import JsonFormatter
from sandbox import SandboxServer
from tests.conftest import SandboxClient, free_port, wait_for
from tests.processes import CELERY, WorkerProcess, beat
from worker.engine.runtime import engine
from worker.providers.base import Notification

GDS_NOTIFY = str(Path(sys.executable).with_name("gds-notify"))


def records(log: Path) -> list[dict[str, Any]]:
    """Every line of ``log`` as JSON; fails on the first line that is not one object."""
    found = []
    for number, line in enumerate(log.read_text().split("\n")[:-1], 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{log.name} line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        found.append(entry)
    assert log.read_text().endswith("\n")
    return found


def assert_base_fields(entry: dict[str, Any]) -> None:
    assert {"time", "level", "logger", "message", "process"} <= entry.keys(), entry
    when = datetime.fromisoformat(entry["time"])
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=10)
    assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert isinstance(entry["process"], int)


def delivery_line(found: list[dict[str, Any]], job_id: str, outcome: str) -> dict[str, Any]:
    [line] = [e for e in found if e.get("job_id") == job_id and e.get("outcome") == outcome]
    return line


def test_a_worker_logs_every_line_as_json_with_the_delivery_fields(
    service_env: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    log = tmp_path / "worker.log"
    worker = WorkerProcess(log, "-P", "threads", "-c", "2")
    api = SandboxClient(service_env)

    def final(job_id: str) -> str:
        def done() -> str | None:
            record = engine().jobs.get(job_id)
            status = record["status"] if record else None
            return status if status in ("delivered", "dead-lettered") else None

        return str(wait_for(done, timeout=30))

    def page(subject: str) -> str:
        note = Notification(recipient="db-1", subject=subject, priority="critical")
        return tasks.enqueue(note)

    try:
        worker.start(timeout=60)
        delivered = page("Disk full on db-1")
        assert final(delivered) == "delivered"
        api.faults({"status": 500})
        retried = page("Disk full on db-2")
        assert final(retried) == "delivered"
        api.faults({"status": 400})
        dead = page("Disk full on db-3")
        assert final(dead) == "dead-lettered"
        wait_for(lambda: dead in log.read_text() and "dead-lettered" in log.read_text())
    finally:
        api.close()
        worker.stop()

    found = records(log)
    for entry in found:
        assert_base_fields(entry)
    messages = " ".join(e["message"] for e in found)
    assert " ready." in messages
    assert "Warm shutdown" in messages  # written from a signal handler, as JSON too
    assert "[queues]" in messages  # the banner, as one record
    # One line per PagerDuty call, the provider's (key masked); not httpx's as well.
    assert "pagerduty trigger key=" in messages
    assert not [e for e in found if e["logger"].startswith("httpx")], "httpx's INFO lines"

    line = delivery_line(found, delivered, "delivered")
    record = engine().jobs.get(delivered)
    assert record is not None
    [attempt] = [a for a in record["attempts"] if a["outcome"] == "delivered"]
    assert line["logger"] == "worker.engine.delivery"
    assert line["level"] == "INFO"
    assert line["channel"] == "pagerduty"
    assert line["attempt"] == 1
    assert line["latency_ms"] == attempt["latency_ms"]  # what `gds-notify status` shows
    assert line["latency_ms"] > 0
    assert line["task_name"] == "deliver.pagerduty"
    assert line["message"].startswith(f"job {delivered} pagerduty delivered at attempt 1 in ")
    assert isinstance(line["task_id"], str)
    assert line["task_id"]

    first, second = (
        delivery_line(found, retried, "retry"),
        delivery_line(found, retried, "delivered"),
    )
    assert (first["attempt"], first["channel"], first["level"]) == (1, "pagerduty", "INFO")
    assert (second["attempt"], second["channel"]) == (2, "pagerduty")
    assert isinstance(first["latency_ms"], float)
    assert first["message"].startswith(f"job {retried} pagerduty attempt 1: ")

    gone = delivery_line(found, dead, "dead")
    assert (gone["attempt"], gone["channel"], gone["level"]) == (1, "pagerduty", "WARNING")
    assert gone["message"].startswith(f"job {dead} pagerduty dead-lettered: ")
    assert isinstance(gone["latency_ms"], float)
    # Celery's "Task ... succeeded/failed" lines come with the task's whole context, its
    # arguments included; that object is not serialised, only the message.
    assert all("data" not in e and "args" not in e for e in found)


def test_beat_logs_every_line_as_json(service_env: SandboxServer, tmp_path: Path) -> None:
    with beat(tmp_path, LOG_FORMAT="json", JOB_RECOVERY_INTERVAL="0.3") as log:
        wait_for(lambda: b"Sending due task jobs-recover" in log.read_bytes(), timeout=30)
    found = records(log)
    for entry in found:
        assert_base_fields(entry)
    assert any(e["message"] == "beat: Starting..." for e in found)
    assert any(e["logger"] == "celery.beat" and "jobs.recover" in e["message"] for e in found)


def test_the_api_logs_every_line_as_json_with_keys_in_paths_masked(
    service_env: SandboxServer, tmp_path: Path
) -> None:
    key = "gdsn_" + "k" * 30 + "KEY9"
    tokens = [{"name": "cron", "sha256": token_hash(key), "scopes": ["heartbeat"]}]
    env = {**os.environ, "LOG_FORMAT": "json", "API_TOKENS": json.dumps(tokens)}
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [GDS_NOTIFY, "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), timeout=30)
        httpx.post(f"{base}/ping/{key}/nightly-backup", timeout=10)
        httpx.post(f"{base}/v1/notifications", json={}, timeout=10)  # no token: 401
        # The token percent-encoded in a path no route takes (a mistyped base URL).
        encoded = key.replace("_", "%5F", 1)
        httpx.get(f"{base}/x/{encoded}/y%0Az", timeout=10)
        # A slash escaped inside a key: decoded, it would end the masked segment early.
        httpx.get(f"{base}/ping/{key[:12]}%2F{key[12:]}/z", timeout=10)
        # The slash before the key escaped: the server routes it as /ping/{key}/...
        uuid = "5cca24d4-9979-4a51-a68f-e6493e6e10bf"
        httpx.get(f"{base}/ping%2F{uuid}", timeout=10)
        httpx.get(f"{base}/medic%2f{key}/service", timeout=10)
        wait_for(lambda: b"/v1/notifications" in log.read_bytes())
        wait_for(lambda: b"/x/" in log.read_bytes())
        wait_for(lambda: b"/medic%2f" in log.read_bytes())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    found = records(log)
    for entry in found:
        assert_base_fields(entry)
    assert key not in log.read_text()
    assert key[5:] not in log.read_text()  # nor its secret part, however spelled
    assert uuid[:-4] not in log.read_text()  # a Healthchecks UUID is a key too
    assert any(e["logger"] == "uvicorn.error" for e in found)  # uvicorn's own log too
    access = [e for e in found if e["logger"] == "uvicorn.access"]
    [ping] = [e for e in access if e["path"].endswith("/nightly-backup")]
    [escaped] = [e for e in access if e["path"].endswith("/z")]
    assert escaped["path"] == "/ping/…KEY9/z"
    assert ping["path"] == "/ping/…KEY9/nightly-backup"
    assert '"POST /ping/…KEY9/nightly-backup HTTP/1.1"' in ping["message"]
    assert ping["method"] == "POST"
    [mistyped] = [e for e in access if e["path"].startswith("/x/")]
    assert mistyped["path"] == "/x/…KEY9/y%0Az"  # what cannot be logged stays encoded
    [refused] = [e for e in access if e["path"] == "/v1/notifications"]
    assert refused["status_code"] == 401
    assert refused["client_addr"].startswith("127.0.0.1:")


def test_the_command_line_logs_as_json_when_it_logs(service_env: SandboxServer) -> None:
    env = {**os.environ, "LOG_FORMAT": "json"}
    done = subprocess.run(
        [GDS_NOTIFY, "-v", "send", "db-1", "Disk full", "--priority", "critical"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split()[-1]
    found = [json.loads(line) for line in done.stderr.splitlines()]
    accepted = [e for e in found if e.get("outcome") == "accepted"]
    assert [e["job_id"] for e in accepted] == [job_id]
    assert accepted[0]["channels"] == "pagerduty"


@pytest.mark.parametrize(
    "argv",
    [
        [GDS_NOTIFY, "api", "--port", "0"],
        [CELERY, "-A", "worker", "worker"],
        [CELERY, "-A", "worker", "beat"],
    ],
    ids=["api", "worker", "beat"],
)
def test_a_bad_log_format_stops_each_process_in_one_line(argv: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "LOG_FORMAT": "yaml"}
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "LOG_FORMAT" in done.stderr
    assert "'text' or 'json'" in done.stderr
    assert "yaml" in done.stderr


def test_the_formatter_writes_plain_fields_only_and_one_line_per_record() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb %s", ("c",), None)
        record.exc_info = sys.exc_info()
    record.__dict__.update(
        job_id="j1",
        attempt=2,
        ok=True,
        latency_ms=float("nan"),
        missing=None,
        payload={"routing_key": "R0UT1NGKEY0000000000000000000001"},
        secret=SecretStr("hunter2-hunter2"),
        level="overridden?",
        _private="x",
    )
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "a\nb c"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "x"
    assert (entry["job_id"], entry["attempt"], entry["ok"], entry["missing"]) == (
        "j1",
        2,
        True,
        None,
    )
    assert entry["latency_ms"] == "nan"
    assert entry["exception"].startswith("Traceback (most recent call last)")
    assert entry["exception"].endswith("ValueError: boom")
    for left_out in ("payload", "secret", "_private", "args", "msg", "exc_info"):
        assert left_out not in entry
    assert "R0UT1NGKEY" not in line
    assert "hunter2" not in line


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
