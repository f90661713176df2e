"""``celery -A worker worker --nice N`` lowers the whole worker's CPU priority, and
``--idle-priority`` (the Procfile's email pool) puts every thread under SCHED_IDLE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import tasks
from tests.conftest import wait_for
from tests.processes import CELERY, ROOT, WorkerProcess
from worker.engine.runtime import engine

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def thread_niceness(pid: int) -> set[int]:
    """The nice value of every thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        values.add(int(stat.rpartition(")")[2].split()[16]))
    return values


def test_nice_worker_runs_every_thread_at_lower_priority_and_still_delivers(
    service_env: Any, tmp_path: Path
) -> None:
    base = os.nice(0)
    worker = WorkerProcess(tmp_path / "worker.log", "-P", "threads", "-c", "4", "--nice", "7")
    worker.start()
    try:
        assert worker.proc is not None
        job = tasks.enqueue({"recipient": "a@example.com", "subject": "niced", "body": "x"})
        wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "delivered", timeout=30)
        assert thread_niceness(worker.proc.pid) == {base + 7}  # pool threads included
    finally:
        worker.stop()


def thread_policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()}


def test_idle_priority_worker_runs_every_thread_under_sched_idle_and_still_delivers(
    service_env: Any, tmp_path: Path
) -> None:
    base = os.nice(0)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(log, "-P", "threads", "-c", "4", "--idle-priority", "--nice", "5")
    worker.start()
    try:
        assert worker.proc is not None
        job = tasks.enqueue({"recipient": "a@example.com", "subject": "idle", "body": "x"})
        wait_for(lambda: (engine().jobs.get(job) or {}).get("status") == "delivered", timeout=30)
        assert thread_policies(worker.proc.pid) == {os.SCHED_IDLE}  # pool threads included
        # Given both, the idle policy wins and says so: --nice is not applied on top.
        assert thread_niceness(worker.proc.pid) == {base}
        assert "--idle-priority given: --nice 5 is ignored" in log.read_text()
    finally:
        worker.stop()


def test_the_procfile_and_compose_start_the_email_pool_at_idle_priority() -> None:
    procfile = (ROOT / "Procfile").read_text()
    [email] = [line for line in procfile.splitlines() if line.startswith("email:")]
    assert email.endswith("--idle-priority")
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["worker-email"]["command"].endswith("--idle-priority")
    # Between containers, cgroup weight decides: the email pool's is below the default.
    assert services["worker-email"]["cpu_shares"] < 1024
    assert "cpu_shares" not in services["worker-pagerduty"]


def test_nice_is_refused_out_of_range(service_env: Any) -> None:
    done = subprocess.run(
        [CELERY, "-A", "worker", "worker", "--nice", "25"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "25 is not in the range 0<=x<=19" in done.stderr
