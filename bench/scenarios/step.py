"""One delivery step on its own, in the harness's main thread, beside the bare send it
stands for: what the worker's CPU goes on for a page and for an email, part by part, with
no Celery, no other thread and no other pool in the way.

Jobs are queued with ``tasks.enqueue`` while no pool runs; their delivery messages are
taken off the queue and each is delivered by :func:`worker.engine.delivery.deliver` (what
the ``deliver.*`` tasks run) against the stack's Redis, emulator and sink, logging at INFO
to a file as a worker does. In alternating rounds the bare baselines' task functions
(:mod:`bench.baseline_app`, called in place) send the same event or message. Each figure
is thread CPU time per item, in milliseconds:

- ``step``: one delivery step; ``bare_send``: the bare send; ``beyond_bare``: the
  difference, what the project adds to the provider's call in the worker;
- ``timed_step``: the step in rounds of their own with the functions below timed
  (:class:`bench.part_timer.PartTimer`; each part excludes the others it calls), and its
  parts: ``validate`` (the delivery job's validation), ``claim`` and ``record`` (our code
  around them), ``redis`` (their round trips, redis-py included), ``provider`` (the
  provider's call: for a page the POST, for an email writing the message and the SMTP
  transaction), ``log`` (every log line), and ``rest`` (``timed_step`` less all those: the
  glue, and the timer's own cost).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import tasks
from bench.baseline_app import bare_http, bare_smtp, close_thread_clients
from bench.context import Context
from bench.measure import BenchError, thread_cpu_ms
from bench.part_timer import PartTimer
from bench.scenarios import baselines
from bench.scenarios.latency import email
from bench.scenarios.pipeline import page
from config import library_logging
from config.queues import DELIVERY_TASK, QUEUE_OF
from worker.channels import Channel
from worker.engine import delivery
from worker.engine.delivery import OutcomeKind, deliver
from worker.engine.delivery_job import DeliveryJob
from worker.engine.jobs import JobStore
from worker.engine.redis_client import ScriptReplayingPipeline
from worker.engine.runtime import engine

NAME = "step"
PARTS = ("validate", "claim", "redis", "provider", "record", "log")
#: Celery's worker log format: each delivery line costs what it costs in a worker.
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def step_timer() -> PartTimer:
    """The timer over the functions a step passes through, named as :data:`PARTS`."""
    return (
        PartTimer()
        .function(DeliveryJob, "model_validate", "validate")
        .context(JobStore, "claim", "claim")
        .function(JobStore, "record", "record")
        .function(ScriptReplayingPipeline, "execute", "redis")
        .function(delivery, "_send", "provider")
        .function(logging.Logger, "_log", "log")
    )


def queued(ctx: Context, channel: Channel, count: int, label: str) -> list[tuple[Any, str]]:
    """``count`` jobs for ``channel`` queued and taken back off the queue as a worker
    would receive them: (the task's payload, its message id)."""
    client = engine().redis
    queue = QUEUE_OF[channel]
    if waiting := client.llen(queue):
        raise BenchError(
            f"{waiting} messages were already waiting in {queue}: the step takes its jobs "
            "off an empty queue (flush Redis, or run it with no pool consuming leftovers)"
        )
    make = page if channel is Channel.PAGERDUTY else email
    for i, key in enumerate(ctx.ids(f"step-{label}", count)):
        tasks.enqueue(make(key, i))
    raw = client.lrange(queue, 0, -1)
    client.delete(queue)
    jobs = []
    for message in reversed(raw):  # LPUSHed: the oldest is last
        envelope = json.loads(message)
        if (task := envelope["headers"]["task"]) != DELIVERY_TASK[channel]:
            raise BenchError(f"a {task} message in {queue}, where only {channel} jobs belong")
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        jobs.append((args[0], envelope["headers"]["id"]))
    if len(jobs) != count:
        raise BenchError(f"queued {count} {channel} jobs but found {len(jobs)}")
    return jobs


def bare_sends(ctx: Context, channel: Channel, count: int, label: str) -> list[Callable[[], None]]:
    """The bare sends of the same events or messages, ready to call."""
    keys = ctx.ids(f"step-bare-{label}", count)
    if channel is Channel.PAGERDUTY:
        return [partial(bare_http.run, event) for event in baselines.events(keys)]
    return [partial(bare_smtp.run, *message) for message in baselines.messages(keys)]


def one_step(channel: Channel, payload: Any, message_id: str) -> None:
    """Deliver one queued job, as the ``deliver.*`` task does; it must be delivered."""
    outcome = deliver(engine(), payload, message_id, channel.value)
    if outcome.kind is not OutcomeKind.DELIVERED:
        raise BenchError(f"a {channel} step ended {outcome.kind}: {outcome.reason}")


def steps(jobs: list[tuple[Any, str]], channel: Channel) -> list[Callable[[], None]]:
    """The delivery steps of ``jobs``, ready to call."""
    return [partial(one_step, channel, payload, message_id) for payload, message_id in jobs]


@contextmanager
def worker_logging(path: str) -> Iterator[None]:
    """INFO lines to ``path`` in Celery's format, httpx's turned down, as in a worker."""
    root = logging.getLogger()
    level, handler = root.level, logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    quieted = {name: logging.getLogger(name).level for name in library_logging.REPEATING}
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    library_logging.quiet()
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
        for name, was in quieted.items():
            logging.getLogger(name).setLevel(was)


def measure(ctx: Context, channel: Channel) -> tuple[dict[str, float], dict[str, Any]]:
    """The figures of ``channel`` (see the module's docstring), and their details."""
    rounds = ctx.sizes.throughput_rounds
    each = max(1, ctx.sizes.step_jobs // rounds)
    spent = dict.fromkeys(("step", "bare_send", "timed_step"), 0.0)
    timer = step_timer()
    # Connections, sessions and first-use costs: in no figure.
    thread_cpu_ms(steps(queued(ctx, channel, ctx.sizes.warmup, f"{channel}-warmup"), channel))
    thread_cpu_ms(bare_sends(ctx, channel, ctx.sizes.warmup, f"{channel}-warmup"))
    for r in range(rounds):
        spent["step"] += thread_cpu_ms(steps(queued(ctx, channel, each, f"{channel}-{r}"), channel))
        spent["bare_send"] += thread_cpu_ms(bare_sends(ctx, channel, each, f"{channel}-{r}"))
        timed = steps(queued(ctx, channel, each, f"{channel}-timed-{r}"), channel)
        with timer:
            spent["timed_step"] += thread_cpu_ms(timed)
    count = each * rounds
    figures = {name: round(ms / count, 3) for name, ms in spent.items()}
    parts = {part: round(timer.spent[part] * 1000 / count, 3) for part in PARTS}
    figures["beyond_bare"] = round(figures["step"] - figures["bare_send"], 3)
    # The timed rounds' own step, the wrappers' cost included, is what the parts add up to.
    parts["rest"] = round(figures["timed_step"] - sum(parts.values()), 3)
    return figures | parts, {"steps_of_each_kind": count}


def run(ctx: Context) -> dict[str, Any]:
    ctx.stack.stop_pools()  # this process alone takes the jobs off the queues
    ctx.fresh_sandbox()
    ctx.mail.reset()
    figures: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}
    try:
        with worker_logging(str(ctx.stack.logs / "step.log")):
            for channel in (Channel.PAGERDUTY, Channel.EMAIL):
                figures[channel.value], details[channel.value] = measure(ctx, channel)
    finally:
        try:
            close_thread_clients()
        finally:
            engine().providers.close()
    for name, f in figures.items():
        ctx.log(
            f"  {name}: step {f['step']:.3f} ms of CPU, bare send {f['bare_send']:.3f} ms; "
            + ", ".join(f"{p} {f[p]:.3f}" for p in (*PARTS, "rest"))
        )
    return {"step_cpu_ms": figures, "details": details}
