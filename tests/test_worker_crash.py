"""A worker process killed with SIGKILL in the middle of a delivery: the job comes back
after the visibility timeout and is delivered, once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import tasks
from config.settings import get_settings
from sandbox import SandboxServer
from tests.conftest import SandboxClient, reconfigure, wait_for
from tests.processes import WorkerProcess
from worker.engine.runtime import engine
from worker.providers.base import Notification


@pytest.fixture
def short_visibility(service_env: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "5")
    monkeypatch.setenv("RETRY_CAP_SECONDS", "0.5")
    get_settings.cache_clear()
    reconfigure()
    return service_env


def test_sigkill_mid_delivery_then_restart_delivers_once(
    short_visibility: SandboxServer, tmp_path: Path
) -> None:
    api = SandboxClient(short_visibility)
    api.faults({"delay": 3})  # the first delivery hangs in PagerDuty's hands...
    worker = ["-P", "threads", "-c", "2"]
    first = WorkerProcess(tmp_path / "worker.log", *worker).start()
    second = WorkerProcess(tmp_path / "worker.log", *worker)
    try:
        job = tasks.enqueue(
            Notification(
                recipient="db-2",
                subject="Primary down",
                priority="critical",
                idempotency_id="crash-1",
            )
        )
        time.sleep(1.5)  # ...and the worker dies while waiting for the answer.
        first.kill()
        assert engine().jobs.get(job)["status"] == "pending"  # type: ignore[index]
        second.start()
        wait_for(lambda: engine().jobs.get(job)["status"] == "delivered", timeout=40)  # type: ignore[index]
    finally:
        first.stop()
        second.stop()
    record = engine().jobs.get(job)
    assert record is not None
    assert record["channels"]["pagerduty"]["attempts"] == 1  # the killed attempt never finished
    [incident] = api.incidents()  # the hung request and the redelivery share one dedup key
    assert incident["dedup_key"] == "crash-1"
    api.close()
