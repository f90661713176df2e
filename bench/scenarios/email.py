"""``email_per_s``: emails per second through the pipeline (``tasks.enqueue``, the
Procfile's ``email`` pool, the SMTP sink), from the first enqueue to the sink's receipt of
the last; ``raw_smtp_per_s``: aiosmtplib alone sending the same messages (built before the
clock starts) over one connection in a loop to the same sink; ``email_vs_raw`` the ratio."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosmtplib

import tasks
from bench.context import Context
from bench.measure import wait_until
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


def run(ctx: Context) -> dict[str, Any]:
    ctx.deployed_pools()
    ctx.mail.reset()
    for i, key in enumerate(ctx.ids("email-warmup", ctx.sizes.warmup)):
        tasks.enqueue(email(key, i))
    wait_until(lambda: ctx.mail.message_count() >= ctx.sizes.warmup, 60, "warm-up emails")

    count = ctx.sizes.email_messages
    emails = [email(key, i) for i, key in enumerate(ctx.ids("email", count))]
    ctx.mail.reset()
    started, enqueued = ctx.produce(emails, tasks.enqueue)
    wait_until(
        lambda: ctx.mail.message_count() >= count,
        max(120.0, count / 10),
        f"{count} emails at the SMTP sink",
        interval=0.05,
    )
    finished = max(float(m["at"]) for m in ctx.mail.messages())
    rate = count / (finished - started)

    ctx.mail.reset()
    raw_count = ctx.sizes.raw_smtp_messages
    raw = asyncio.run(_raw("127.0.0.1", ctx.stack.smtp_port, raw_count, ctx.ids("raw", raw_count)))
    ctx.log(f"  email: pipeline {rate:.0f}/s, raw aiosmtplib {raw:.0f}/s")
    return {
        "email_per_s": round(rate, 1),
        "raw_smtp_per_s": round(raw, 1),
        "email_vs_raw": round(rate / raw, 3),
        "details": {
            "emails": count,
            "seconds": round(finished - started, 3),
            "enqueue_per_s": round(count / (enqueued - started), 1),
            "raw_messages": raw_count,
        },
    }
