"""Flower as operators run it (``celery -A worker flower``): basic auth from
FLOWER_BASIC_AUTH, persistent state, self-explaining task names, no secrets in arguments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

import tasks
from sandbox import SandboxServer
from tests.conftest import ROUTING_KEY, TEAM_KEY, free_port, wait_for
from worker.engine.runtime import engine
from worker.providers.base import Notification

CELERY = str(Path(sys.executable).with_name("celery"))
ROOT = Path(__file__).resolve().parent.parent


def test_flower_requires_credentials_and_shows_tasks_without_secrets(
    service_env: SandboxServer, celery_worker: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": "ops:correct-horse",
        "FLOWER_PERSISTENT": "True",
        "FLOWER_DB": str(tmp_path / "flower.db"),
    }
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [CELERY, "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    auth = ("ops", "correct-horse")
    try:
        wait_for(lambda: _answers(f"{base}/healthcheck"), timeout=30)
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/api/tasks", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{base}/", auth=auth).status_code == 200

        job = tasks.enqueue(
            Notification(recipient="db-2", subject="Disk full", priority="critical"), team="dba"
        )
        wait_for(lambda: engine().jobs.get(job)["status"] == "delivered")  # type: ignore[index]

        def seen() -> dict[str, Any] | None:
            listing = httpx.get(f"{base}/api/tasks", auth=auth, timeout=5).json()
            found = [t for t in listing.values() if t.get("name") == "deliver.pagerduty"]
            return found[0] if found and found[0].get("state") == "SUCCESS" else None

        task = wait_for(seen, timeout=20)
        assert job in task["args"]
        page = httpx.get(f"{base}/api/tasks", auth=auth).text
        page += httpx.get(f"{base}/task/{task['uuid']}", auth=auth).text
        for secret in (ROUTING_KEY, TEAM_KEY):
            assert secret not in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert any(p.name.startswith("flower.db") for p in tmp_path.iterdir())  # persistent state


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
