"""Flower as operators run it (``celery -A worker flower``): basic auth from
FLOWER_BASIC_AUTH, persistent state, self-explaining task names, no secrets in arguments;
a dead letter is a FAILURE with its reason, and every task it sees ends."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import tasks
from sandbox import SandboxServer
from tests.browser import CHROMIUM, headless
from tests.conftest import ROUTING_KEY, TEAM_KEY, SandboxClient, free_port, wait_for
from tests.heartbeat_helpers import WriteCatalogue, service
from worker.engine.runtime import engine
from worker.providers.base import Notification

CELERY = str(Path(sys.executable).with_name("celery"))
ROOT = Path(__file__).resolve().parent.parent
AUTH = ("ops", "correct-horse")


@contextmanager
def flower(tmp_path: Path, **env: str) -> Iterator[str]:
    """``celery -A worker flower`` with basic auth and persistent state, on a free port;
    yields its base URL (without credentials)."""
    port = free_port()
    environment = {
        **os.environ,
        "FLOWER_BASIC_AUTH": ":".join(AUTH),
        "FLOWER_PERSISTENT": "True",
        "FLOWER_DB": str(tmp_path / "flower.db"),
        **env,
    }
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [CELERY, "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthcheck"), timeout=30)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def watching(base: str) -> None:
    """Wait until Flower hears the worker: events published before it subscribed are gone
    for it (its web page answers a little before its event receiver listens). The worker
    is asked for a heartbeat event, as the in-thread one sends none of its own."""
    from worker import app

    def heard() -> bool:
        app.control.heartbeat()
        answer = httpx.get(f"{base}/workers?json=1", auth=AUTH, timeout=5)
        return bool(answer.json()["data"])

    wait_for(heard, timeout=30, interval=0.2)


def flower_tasks(base: str) -> dict[str, dict[str, Any]]:
    """Every task Flower knows, by id (``/api/tasks``)."""
    return dict(httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json())


def test_flower_requires_credentials_and_shows_tasks_without_secrets(
    service_env: SandboxServer, celery_worker: Any, tmp_path: Path
) -> None:
    with flower(tmp_path) as base:
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/api/tasks", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{base}/", auth=AUTH).status_code == 200

        job = tasks.enqueue(
            Notification(recipient="db-2", subject="Disk full", priority="critical"), team="dba"
        )
        wait_for(lambda: engine().jobs.get(job)["status"] == "delivered")  # type: ignore[index]

        def seen() -> dict[str, Any] | None:
            found = [t for t in flower_tasks(base).values() if t.get("name") == "deliver.pagerduty"]
            return found[0] if found and found[0].get("state") == "SUCCESS" else None

        task = wait_for(seen, timeout=20)
        assert job in task["args"]
        page = httpx.get(f"{base}/api/tasks", auth=AUTH).text
        page += httpx.get(f"{base}/task/{task['uuid']}", auth=AUTH).text
        for secret in (ROUTING_KEY, TEAM_KEY):
            assert secret not in page
    assert any(p.name.startswith("flower.db") for p in tmp_path.iterdir())  # persistent state


def test_flower_logs_one_json_object_a_line_under_log_format_json(
    service_env: SandboxServer, tmp_path: Path
) -> None:
    # Flower logs through Tornado, whose own text handler none of Celery's logging
    # signals reach: a log pipeline reading JSON lines met its banner as plain text.
    with flower(tmp_path, LOG_FORMAT="json") as base:
        assert httpx.get(f"{base}/", auth=AUTH).status_code == 200
    lines = (tmp_path / "flower.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert any(
        r["logger"] == "flower.command" and r["message"].startswith("Visit me") for r in records
    )
    registered = next(r for r in records if r["message"].startswith("Registered tasks"))
    assert "deliver.pagerduty" in registered["message"]  # a multi-line message, one record


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_a_dead_letter_is_a_failure_with_its_reason_in_flower_and_its_message_is_acked(
    service_env: SandboxServer, celery_worker: Any, tmp_path: Path
) -> None:
    from worker import app

    sandbox = SandboxClient(service_env)
    sandbox.settings(strict_keys=["SOMEOTHERKEY00000000000000000000"])  # a 400 for ours
    # The list shows each task's exception too, as the README suggests.
    columns = "name,uuid,state,exception,received,runtime,worker"
    try:
        with flower(tmp_path, FLOWER_TASKS_COLUMNS=columns) as base:
            watching(base)
            job = tasks.enqueue(
                Notification(recipient="db-2", subject="Disk full", priority="critical"),
                team="dba",
            )
            refused = app.send_task("notify", args=[{"recipient": "", "subject": "x"}]).id
            store = engine().dead_letters
            page = wait_for(lambda: store.get(f"{job}-pagerduty"))
            intake = wait_for(lambda: store.get(refused))
            assert "PagerDuty rejected event: Invalid routing key" in page["reason"]

            def failed() -> dict[str, dict[str, Any]] | None:
                known = flower_tasks(base)
                done = {
                    t["name"]: t
                    for t in known.values()
                    if t.get("name") in ("deliver.pagerduty", "notify")
                    and t.get("state") == "FAILURE"
                }
                return done if len(done) == 2 else None

            shown = wait_for(failed, timeout=20)
            delivery = shown["deliver.pagerduty"]
            assert delivery["uuid"] == f"{job}-pagerduty"
            assert page["reason"] in delivery["exception"]
            assert intake["reason"] in shown["notify"]["exception"]
            assert "recipient: must not be blank" in shown["notify"]["exception"]

            workers = httpx.get(f"{base}/workers?json=1", auth=AUTH, timeout=5).json()["data"]
            assert sum(w.get("task-failed", 0) for w in workers) >= 2
            assert sum(w.get("task-succeeded", 0) for w in workers) == 0

            # What an operator sees: the list, the task's page and the dashboard, in a
            # real browser (credentials in the URL; its XHRs reuse them).
            authed = base.replace("http://", "http://{}:{}@".format(*AUTH))
            listing = html.unescape(headless(f"{authed}/tasks", tmp_path, script_ms=5000))
            row = re.search(rf'<tr id="{re.escape(delivery["uuid"])}".*?</tr>', listing, re.S)
            assert row is not None, listing[-3000:]
            assert "deliver.pagerduty" in row.group(0)
            assert "FAILURE" in row.group(0)
            assert page["reason"] in row.group(0)
            detail = html.unescape(headless(f"{authed}/task/{delivery['uuid']}", tmp_path))
            assert "FAILURE" in detail
            assert page["reason"] in detail
            dashboard = headless(f"{authed}/", tmp_path, script_ms=5000)
            count = re.search(r'id="workers-failed">(\d+)<', dashboard)
            assert count is not None, dashboard[-3000:]
            assert int(count.group(1)) >= 2

            everything = httpx.get(f"{base}/api/tasks", auth=AUTH).text + listing + detail
            for secret in (ROUTING_KEY, TEAM_KEY):
                assert secret not in everything

        # Failed, not retried nor redelivered: one attempt, one event, nothing held.
        record = engine().jobs.get(job)
        assert record is not None
        assert record["channels"]["pagerduty"]["attempts"] == 1
        assert len(sandbox.events()) == 1
        assert engine().redis.hlen("unacked") == 0
        assert all(engine().redis.llen(q) == 0 for q in ("celery", "pagerduty", "email"))
    finally:
        sandbox.close()


def test_messages_no_task_can_run_are_failures_with_their_reason_in_flower(
    service_env: SandboxServer, celery_worker: Any, tmp_path: Path
) -> None:
    from tests.test_drills import _envelope

    poison = {
        "wrong shape": ("celery", _envelope("notify", [["a", "list"]])),
        "not UTF-8": ("celery", _envelope("notify", [], body=b"\xff\xfe{")),
        "pickle": (
            "celery",
            json.dumps(
                {
                    **json.loads(_envelope("notify", [])),
                    "content-type": "application/x-python-serialize",
                }
            ),
        ),
        "bad delivery": ("pagerduty", _envelope("deliver.pagerduty", [{}])),
    }
    ids = {json.loads(message)["headers"]["id"]: name for name, (_, message) in poison.items()}
    with flower(tmp_path) as base:
        watching(base)
        for queue, message in poison.values():
            engine().redis.lpush(queue, message)

        def failed() -> dict[str, dict[str, Any]] | None:
            known = flower_tasks(base)
            found = {i: known[i] for i in ids if known.get(i, {}).get("state") == "FAILURE"}
            return found if len(found) == len(ids) else None

        shown = wait_for(failed, timeout=20)
    reasons = sorted(e["reason"] for e in engine().dead_letters.list(100))
    assert len(reasons) == len(poison)
    for task_id, task in shown.items():
        assert any(reason in task["exception"] for reason in reasons), (ids[task_id], task)
        assert task["name"] in ("notify", "deliver.pagerduty")


def test_every_heartbeat_check_ends_success_in_flower(
    catalogue: WriteCatalogue, tmp_path: Path
) -> None:
    """A check takes about a millisecond: on the thread pool its task-succeeded event used
    to be dropped while the worker published its task-received, leaving it RECEIVED."""
    from tests.processes import WorkerProcess
    from worker import app
    from worker.engine.heartbeats.paging import check_soon
    from worker.engine.messages import check_message

    catalogue(service("quiet", window=60))
    worker = WorkerProcess(tmp_path / "worker.log", "-P", "threads", "-c", "4")
    with flower(tmp_path) as base:
        worker.start()
        try:
            watching(base)
            check_soon(engine())  # the early check a reported failure asks for
            for i in range(30):
                if i % 2:
                    queue, message = check_message()  # what check_soon writes
                    engine().redis.lpush(queue, message)
                else:  # as beat sends it
                    app.send_task("heartbeat.check", expires=60)

            def settled() -> Counter[str] | None:
                states = Counter(
                    str(t.get("state"))
                    for t in flower_tasks(base).values()
                    if t.get("name") == "heartbeat.check"
                )
                return states if states == Counter({"SUCCESS": 31}) else None

            try:
                wait_for(settled, timeout=30, interval=0.5)
            except AssertionError:
                states = Counter(
                    (t.get("name"), t.get("state")) for t in flower_tasks(base).values()
                )
                raise AssertionError(f"Flower's heartbeat.check states: {states}") from None
        finally:
            worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert log.count("Task heartbeat.check[") >= 62  # received and succeeded, each


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
