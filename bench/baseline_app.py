"""The baselines: a Celery app configured exactly as the product's (``config.celery_config``:
JSON, late acks, prefetch 1, task events, the same Redis transport options) with three
tasks that do only the essential work, so that what the pipeline costs beyond them is the
project's own:

- ``bench.noop`` does nothing: Celery's own cost per task on this Redis.
- ``bench.bare_http`` POSTs a ready PagerDuty event with httpx (one client per thread,
  as the product keeps one provider per thread) and checks for the 202.
- ``bench.bare_smtp`` sends a ready message over an SMTP session it keeps open (one per
  thread, on the thread's own event loop, with aiosmtplib, the product's library).

It lives here, not in the worker, so the product registers no benchmark-only task.
Started as ``celery -A bench.baseline_app worker -Q ...`` with the command line of the
Procfile's pool it is compared with.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiosmtplib
import httpx
from celery import Celery, signals

from config import library_logging
from config.celery_config import celery_config
from config.settings import get_settings
from worker import niceness

NOOP_QUEUE, NOOP_TASK = "bench_noop", "bench.noop"
HTTP_QUEUE, HTTP_TASK = "bench_http", "bench.bare_http"
SMTP_QUEUE, SMTP_TASK = "bench_smtp", "bench.bare_smtp"

app = Celery("gds_bench_baseline")
app.add_defaults(lambda: celery_config(get_settings()))
niceness.install(app)  # the email pool's command line says --idle-priority
# The product's worker logs no line of httpx's per request: neither does this one.
signals.after_setup_logger.connect(lambda **kwargs: library_logging.quiet(), weak=False)
_local = threading.local()


@app.task(name=NOOP_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def noop(*args: Any) -> None:
    """Do nothing: whatever time this task takes is Celery's."""


@app.task(name=HTTP_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def bare_http(event: dict[str, Any]) -> None:
    """POST ``event`` (the routing key added here: never in a task's arguments)."""
    settings = get_settings()
    client = getattr(_local, "http", None)
    if client is None:
        client = _local.http = httpx.Client(
            timeout=httpx.Timeout(settings.pagerduty_timeout),
            headers={"Content-Type": "application/json", "User-Agent": "gds-bench"},
        )
    event["routing_key"] = settings.pagerduty_routing_key.get_secret_value()  # type: ignore[union-attr]
    response = client.post(settings.pagerduty_api_url, content=json.dumps(event).encode())
    if response.status_code != 202:
        raise RuntimeError(f"the emulator answered {response.status_code}")


async def _session() -> aiosmtplib.SMTP:
    settings = get_settings()
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False, timeout=30
    )
    await smtp.connect()
    return smtp


@app.task(name=SMTP_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def bare_smtp(message: str, sender: str, recipients: list[str]) -> None:
    """Send ``message`` over this thread's open session."""
    loop = getattr(_local, "loop", None)
    if loop is None:
        loop = _local.loop = asyncio.new_event_loop()
        _local.smtp = loop.run_until_complete(_session())
    loop.run_until_complete(_local.smtp.sendmail(sender, recipients, message.encode()))


def close_thread_clients() -> None:
    """Close this thread's HTTP client and SMTP session: for a process that called the
    tasks in place and carries on (a worker's close when its process ends)."""
    client = getattr(_local, "http", None)
    if client is not None:
        _local.http = None
        client.close()
    loop = getattr(_local, "loop", None)
    if loop is not None:
        smtp = getattr(_local, "smtp", None)
        _local.loop = _local.smtp = None
        try:
            if smtp is not None and smtp.is_connected:
                loop.run_until_complete(smtp.quit())
        finally:
            loop.close()
