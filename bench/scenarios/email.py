"""Emails per second beside the bare work, in alternating rounds:

- ``email_per_s``: through the pipeline (``tasks.enqueue``, the Procfile's ``email``
  pool, the SMTP sink), from the first enqueue to the sink's receipt of the last;
- ``bare_smtp_per_s``: a bare Celery task sending the same messages (built by the
  producer) over a session each thread keeps, through a worker with the ``email`` pool's
  command line (:mod:`bench.scenarios.baselines`); ``email_vs_bare_smtp`` the ratio;
- ``raw_smtp_per_s``: aiosmtplib alone sending them over one connection in a loop, no
  Celery at all (``email_vs_raw``), once after the rounds.

``cpu_ms_per_1000_emails``: what each process spent per 1,000 emails in each kind of
round (the producer is this harness).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosmtplib

import tasks
from bench.context import Context
from bench.measure import CpuMeter
from bench.procfile import pool
from bench.scenarios import baselines
from bench.scenarios.latency import email
from config.settings import get_settings
from worker.providers.smtp_message import build_message

NAME = "email"


async def _raw(host: str, port: int, count: int, keys: list[str]) -> float:
    sender_addr = get_settings().smtp_from
    built = [build_message(email(key, i), sender_addr) for i, key in enumerate(keys)]
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=30)
    await smtp.connect()
    try:
        started = time.perf_counter()
        for message, sender, recipients in built:
            await smtp.send_message(
                message, sender=sender.addr_spec, recipients=[r.addr_spec for r in recipients]
            )
        return count / (time.perf_counter() - started)
    finally:
        await smtp.quit()


def pipeline_round(ctx: Context, count: int, label: str) -> tuple[float, float]:
    """``count`` emails through the pipeline; (seconds to the sink's receipt of the last,
    seconds to enqueue)."""
    emails = [email(key, i) for i, key in enumerate(ctx.ids(f"email-{label}", count))]
    ctx.mail.reset()
    started, enqueued = ctx.produce(emails, tasks.enqueue)
    finished = ctx.wait_for_mail(count, "emails")
    return finished - started, enqueued - started


def run(ctx: Context) -> dict[str, Any]:
    stack = ctx.stack
    bare_worker, mail_worker = stack.pools(
        [("baseline-smtp", baselines.smtp_spec()), ("email", pool("email"))]
    )
    shared = {
        "producer": stack.harness_pid,
        "redis": stack.local_redis.pid if stack.local_redis else None,
        "sink": stack.mail_sandbox.proc.pid
        if stack.mail_sandbox and stack.mail_sandbox.proc
        else None,
    }
    pipeline_round(ctx, ctx.sizes.warmup, "warmup")
    baselines.smtp_round(ctx, ctx.sizes.warmup, "warmup")

    rounds = ctx.sizes.throughput_rounds
    each = max(1, ctx.sizes.email_messages // rounds)
    seconds = {"email": 0.0, "bare": 0.0}
    enqueued = 0.0
    per_round = []
    cpu = CpuMeter()
    for r in range(rounds):
        mail_pid = mail_worker.proc.pid if mail_worker.proc else None
        with cpu.measure("pipeline", each, {"worker": mail_pid, **shared}):
            took, enq = pipeline_round(ctx, each, str(r))
        seconds["email"] += took
        enqueued += enq
        bare_pid = bare_worker.proc.pid if bare_worker.proc else None
        with cpu.measure("bare_smtp", each, {"worker": bare_pid, **shared}):
            bare_took, _ = baselines.smtp_round(ctx, each, str(r))
        seconds["bare"] += bare_took
        per_round.append([round(each / took, 1), round(each / bare_took, 1)])

    ctx.mail.reset()
    raw_count = ctx.sizes.raw_smtp_messages
    raw = asyncio.run(_raw("127.0.0.1", stack.smtp_port, raw_count, ctx.ids("raw", raw_count)))
    total = each * rounds
    rate, bare = total / seconds["email"], total / seconds["bare"]
    ctx.log(
        f"  email: pipeline {rate:.0f}/s, bare Celery SMTP task {bare:.0f}/s "
        f"(ratio {rate / bare:.3f}), raw aiosmtplib {raw:.0f}/s"
    )
    return {
        "email_per_s": round(rate, 1),
        "bare_smtp_per_s": round(bare, 1),
        "email_vs_bare_smtp": round(rate / bare, 3),
        "raw_smtp_per_s": round(raw, 1),
        "email_vs_raw": round(rate / raw, 3),
        "cpu_ms_per_1000_emails": cpu.per_thousand_ms(),
        "details": {
            "rounds": rounds,
            "emails_per_kind": total,
            "per_round_pipeline_and_bare_per_s": per_round,
            "enqueue_per_s": round(total / enqueued, 1),
            "raw_messages": raw_count,
        },
    }
