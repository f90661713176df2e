"""The baselines the pipeline is measured against (``bench/baseline_app.py``), each
through a worker started with the command line of the Procfile pool it stands beside, on
the same Redis, published by as many producer threads as the pipeline's:

- no-op tasks, timed from the first publish to the queue drained;
- bare HTTP: the same trigger event the pipeline sends for each page (built by the
  producer, before the clock starts), POSTed to the same emulator; timed from the first
  publish to the emulator's receipt of the last, as the pipeline is;
- bare SMTP: the same message the pipeline sends for each email (built by the producer),
  sent to the same sink over a session each thread keeps; timed to the sink's receipt of
  the last.

:mod:`bench.scenarios.throughput` and :mod:`bench.scenarios.email` run them in rounds
alternating with the pipeline's.
"""

from __future__ import annotations

from typing import Any

import redis

from bench.baseline_app import (
    HTTP_QUEUE,
    HTTP_TASK,
    NOOP_QUEUE,
    NOOP_TASK,
    SMTP_QUEUE,
    SMTP_TASK,
    app,
)
from bench.context import Context, delivered_at
from bench.measure import wait_drained
from bench.procfile import PoolSpec, pool, with_option
from bench.scenarios.latency import email
from bench.scenarios.pipeline import page
from config.settings import get_settings
from worker.providers.pagerduty_events import build_trigger
from worker.providers.smtp_message import build_message

#: What the product's provider names itself as, by default.
SOURCE = "gds_notification"


def http_spec() -> PoolSpec:
    """The ``pagerduty`` pool's command line, running the baseline app's no-op and HTTP
    tasks."""
    deployed = pool("pagerduty")
    return with_option(
        with_option(deployed, "-A", "bench.baseline_app"),
        "-Q",
        f"{NOOP_QUEUE},{HTTP_QUEUE}",
        "baseline-http",
    )


def smtp_spec() -> PoolSpec:
    """The ``email`` pool's command line, running the baseline app's SMTP task."""
    deployed = pool("email")
    return with_option(
        with_option(deployed, "-A", "bench.baseline_app"), "-Q", SMTP_QUEUE, "baseline-smtp"
    )


def _send(task: str, queue: str, *args: Any) -> None:
    app.send_task(task, args=list(args), queue=queue, routing_key=queue)


def noop_round(ctx: Context, client: redis.Redis, count: int) -> tuple[float, float]:
    """Run ``count`` no-op tasks; returns (seconds to drain, seconds to publish)."""
    started, published = ctx.produce(range(count), lambda n: _send(NOOP_TASK, NOOP_QUEUE, n))
    finished = wait_drained(client, [NOOP_QUEUE], timeout=max(120.0, count / 20))
    return finished - started, published - started


def events(keys: list[str]) -> list[dict[str, Any]]:
    """The trigger events the pipeline would send for these pages, without the key."""
    return [
        build_trigger(page(key, i), routing_key="", source=SOURCE) for i, key in enumerate(keys)
    ]


def http_round(ctx: Context, count: int, label: str) -> tuple[float, float]:
    """POST ``count`` events through the bare task; returns (seconds to the emulator's
    receipt of the last, seconds to publish)."""
    keys = ctx.ids(f"bare-http-{label}", count)
    ready = events(keys)
    base = ctx.fresh_sandbox()
    started, published = ctx.produce(ready, lambda e: _send(HTTP_TASK, HTTP_QUEUE, e))
    ctx.wait_for_events(base, count, timeout=max(120.0, count / 10))
    finished = max(delivered_at(ctx.sandbox.events(), set(keys)).values())
    return finished - started, published - started


def messages(keys: list[str]) -> list[tuple[str, str, list[str]]]:
    """The emails the pipeline would send, as (message, sender, recipients)."""
    sender = get_settings().smtp_from
    out = []
    for i, key in enumerate(keys):
        message, from_addr, recipients = build_message(email(key, i), sender)
        out.append((message.as_string(), from_addr.addr_spec, [r.addr_spec for r in recipients]))
    return out


def smtp_round(ctx: Context, count: int, label: str) -> tuple[float, float]:
    """Send ``count`` emails through the bare task; returns (seconds to the sink's receipt
    of the last, seconds to publish)."""
    ready = messages(ctx.ids(f"bare-smtp-{label}", count))
    ctx.mail.reset()
    started, published = ctx.produce(ready, lambda m: _send(SMTP_TASK, SMTP_QUEUE, *m))
    finished = ctx.wait_for_mail(count, "bare emails")
    return finished - started, published - started
