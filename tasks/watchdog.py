"""The watchdog's canary on beat: every ``WATCHDOG_INTERVAL`` seconds a canary enters
intake here and travels to a delivery worker, which calls ``WATCHDOG_URL`` (see
worker/engine/watchdog.py)."""

from __future__ import annotations

from worker.celery_app import app
from worker.engine.runtime import engine
from worker.engine.watchdog import send_canary


@app.task(name="watchdog.canary", ignore_result=True)  # type: ignore[untyped-decorator,unused-ignore]
def canary() -> str | None:
    """Queue a canary for the delivery workers; its job id."""
    return send_canary(engine())
