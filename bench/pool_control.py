"""Telling a running pool to stop or start consuming a queue (Celery's remote control), so
that conditions can alternate in rounds without restarting processes."""

from __future__ import annotations

from celery.utils.nodenames import host_format

from bench.measure import BenchError
from worker.celery_app import app


def node(instance: str) -> str:
    """The node name the harness gives pool ``instance`` on this host."""
    return str(host_format(f"{instance}@%h"))


def control(command: str, instance: str, queue: str) -> None:
    """``cancel_consumer`` or ``add_consumer`` for ``queue`` on pool ``instance``."""
    replies = app.control.broadcast(
        command, arguments={"queue": queue}, destination=[node(instance)], reply=True, timeout=5
    )
    if not replies:
        raise BenchError(f"the pool {instance} did not answer {command}")
