"""Real service processes for tests where a crash or the operator's command line is the
point: ``celery -A worker worker`` in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import wait_for

CELERY = str(Path(sys.executable).with_name("celery"))
ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """``celery -A worker worker ARGS``; ``argv`` may also be a whole command line."""

    def __init__(self, log: Path, *args: str, argv: list[str] | None = None) -> None:
        self.log = log
        self.argv = argv or [
            CELERY,
            "-A",
            "worker",
            "worker",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> WorkerProcess:
        before = self.log.read_bytes().count(b"ready.") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.log.read_bytes().count(b"ready.") > before, timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (a warm shutdown) and wait; returns the exit code."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def beat(tmp_path: Path, **env: str) -> Iterator[Path]:
    """``celery -A worker beat`` with the test's settings and ``env`` on top, until the
    block ends; yields its log."""
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [CELERY, "-A", "worker", "beat", "-s", str(tmp_path / "schedule"), "-l", "INFO"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
