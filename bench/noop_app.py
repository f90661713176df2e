"""The baseline: a Celery app with one task that does nothing, configured exactly as the
product's (``config.celery_config``: JSON, late acks, prefetch 1, task events, the same
Redis transport options), so what it measures is Celery's own cost per task on this Redis.

It lives here, not in the worker, so the product registers no benchmark-only task.
Started as ``celery -A bench.noop_app worker -Q bench_noop`` with the pool and concurrency
of the Procfile's ``pagerduty`` pool.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from config.celery_config import celery_config
from config.settings import get_settings

NOOP_QUEUE = "bench_noop"
NOOP_TASK = "bench.noop"

app = Celery("gds_bench_noop")
app.add_defaults(lambda: celery_config(get_settings()))


@app.task(name=NOOP_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def noop(*args: Any) -> None:
    """Do nothing: whatever time this task takes is Celery's."""
