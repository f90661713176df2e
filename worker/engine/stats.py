"""The pool's numbers, kept in Redis where the work is recorded, for ``/metrics``.

Counters live in one hash (``keys.STATS``), one field per counter and label set
(``deliveries:pagerduty:delivered``). They are bumped inside the scripts that already
record the work — accepting a job, recording a delivery step, storing a heartbeat — so
counting costs no round trip on the hot path; the scripts take the increments as
``(field, amount)`` pairs built here, so the naming lives in this module alone. Histograms
are counters too: one field per bucket, plus ``sum`` and ``count``.

Gauges (queue depths, the oldest message's age, dead letters, heartbeat states, workers
up, how long since the checker, the recovery sweep and the watchdog last ran) are read at
scrape time, in one pipelined round trip: :func:`snapshot`.

Every label value is from a bounded set: channels, outcomes, sources, error classes,
heartbeat kinds and states, queues, and teams that have a routing key of their own (any
other team counts as ``default``). Never a job id, a recipient or a key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from config.queues import QUEUE_ORDER
from config.settings import Settings, normalize_team
from worker.engine import keys
from worker.engine.broker_queues import PRIORITY_STEPS, UNACKED_HASH, queue_list
from worker.engine.workers import ALIVE_SECONDS

#: One counter increment: the hash field, and by how much.
Increment = tuple[str, float]

#: Histogram buckets (seconds): a page's provider call takes milliseconds, its way from
#: enqueue to delivered seconds, a throttled or retried one minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def count(*parts: str, by: float = 1.0) -> Increment:
    """The increment of the counter named by ``parts`` (name, then label values)."""
    return ":".join(parts), by


def observe(name: str, label: str, seconds: float) -> list[Increment]:
    """One observation of a histogram: its bucket, its sum and its count."""
    seconds = max(0.0, seconds)
    bucket = next((str(b) for b in BUCKETS if seconds <= b), "+Inf")
    return [
        (f"{name}:{label}:le:{bucket}", 1.0),
        (f"{name}:{label}:sum", seconds),
        (f"{name}:{label}:count", 1.0),
    ]


def flat(increments: Iterable[Increment]) -> list[str | float]:
    """Increments as a script's arguments: ``n, field, amount, field, amount, ...``."""
    pairs = list(increments)
    return [len(pairs), *[item for pair in pairs for item in pair]]


def add(client: redis.Redis, increments: Iterable[Increment]) -> None:
    """Bump counters where no script runs anyway (refusals, which are off the hot path)."""
    pipe = client.pipeline(transaction=False)
    for name, amount in increments:
        pipe.hincrbyfloat(keys.STATS, name, amount)
    pipe.execute()


def team_label(settings: Settings, team: str | None) -> str:
    """A team as a label: its name when it has a routing key of its own, else ``default``
    (the key that pages for it), so producers cannot grow the label set; written as
    routing reads it (``DBA-Prod`` and ``dba_prod`` are one team, one series)."""
    name = settings.routing_key_name(team)
    return "default" if name == "PAGERDUTY_ROUTING_KEY" else normalize_team(team or "")


@dataclass
class Snapshot:
    """What one scrape read: counters by field, and the gauges."""

    now: float
    counters: dict[str, float]
    queues: dict[str, int]
    oldest_age: dict[str, float]
    unacked: int
    dead_letters: dict[str, int]
    #: Seconds since the oldest kept dead letter of each channel died (0 when none).
    dead_letter_oldest_age: dict[str, float]
    heartbeat_states: dict[str, int] | None
    heartbeat_check_age: float | None
    recovery_age: float | None
    watchdog_age: float | None
    workers: dict[str, int] = field(default_factory=dict)
    #: The largest difference, either way, of a live worker's clock from Redis's.
    worker_clock_skew: float = 0.0

    def labelled(self, name: str) -> list[tuple[list[str], float]]:
        """Every counter ``name:label:label…`` as (label values, value)."""
        prefix = name + ":"
        return [
            (field_name[len(prefix) :].split(":"), value)
            for field_name, value in sorted(self.counters.items())
            if field_name.startswith(prefix)
            and ":le:" not in field_name
            and not field_name.endswith((":sum", ":count"))
        ]

    def histograms(self, name: str) -> dict[str, tuple[list[tuple[str, float]], float]]:
        """Each label's cumulative buckets (``le`` and count, ending at ``+Inf``) and sum."""
        out: dict[str, tuple[list[tuple[str, float]], float]] = {}
        prefix = name + ":"
        labels = {
            f[len(prefix) :].rsplit(":", 1)[0]
            for f in self.counters
            if f.startswith(prefix) and f.endswith(":count")
        }
        for label in sorted(labels):
            running = 0.0
            buckets = []
            for bound in [*map(str, BUCKETS), "+Inf"]:
                running += self.counters.get(f"{prefix}{label}:le:{bound}", 0.0)
                buckets.append((bound, running))
            out[label] = (buckets, self.counters.get(f"{prefix}{label}:sum", 0.0))
        return out


def snapshot(client: redis.Redis, watchdog: bool, heartbeats: bool = False) -> Snapshot:
    """Read every counter and gauge in one round trip (plus one write that remembers when
    the oldest message of a queue without timestamps was first seen). Heartbeat states
    and the check's age are read when monitoring is on: ``heartbeats`` (a services file
    is configured), a service registered through the API, or a check's summary in Redis;
    a check that never ran (beat never started, or Redis lost its data) is infinitely old."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(keys.STATS)
    # kombu keeps a queue's messages sent with a Celery priority in lists of their own.
    lists = {queue: [queue_list(queue, step) for step in PRIORITY_STEPS] for queue in QUEUE_ORDER}
    for queue in QUEUE_ORDER:
        for name in lists[queue]:
            pipe.llen(name)
            pipe.lindex(name, -1)  # kombu pushes on the left and takes from the right
    pipe.hlen(UNACKED_HASH)
    for channel in keys.DEAD_LETTER_CHANNELS:
        pipe.zcard(keys.dead_letter_channel(channel))
        pipe.zrange(keys.dead_letter_channel(channel), 0, 0, withscores=True)
    pipe.get(keys.HEARTBEAT_SUMMARY)
    pipe.exists(keys.HEARTBEAT_SERVICES)
    pipe.get(keys.HEARTBEAT_LAST_CHECK)
    pipe.get(keys.RECOVERY_LAST)
    pipe.get(keys.WATCHDOG_LAST)
    pipe.zrangebyscore(keys.WORKERS, "-inf", "+inf", withscores=True)
    pipe.hgetall(keys.WORKERS_INFO)
    pipe.hgetall(keys.QUEUE_OLDEST)
    answers = iter(pipe.execute())
    seconds, micros = next(answers)
    now = float(seconds) + micros / 1_000_000
    counters = {k: float(v) for k, v in cast(dict[str, str], next(answers)).items()}
    queues: dict[str, int] = {}
    oldest: dict[str, Any] = {}
    for queue in QUEUE_ORDER:
        queues[queue] = 0
        for name in lists[queue]:
            queues[queue] += int(next(answers))
            oldest[name] = next(answers)
    unacked = int(next(answers))
    dead: dict[str, int] = {}
    dead_oldest: dict[str, float] = {}
    for channel in keys.DEAD_LETTER_CHANNELS:
        dead[channel] = int(next(answers))
        oldest_letter = cast("list[tuple[str, float]]", next(answers))
        dead_oldest[channel] = max(0.0, now - oldest_letter[0][1]) if oldest_letter else 0.0
    summary, registered, last_check, recovery, watchdog_last = (next(answers) for _ in range(5))
    seen = cast("list[tuple[str, float]]", next(answers))
    infos = cast(dict[str, str], next(answers))
    first_seen = cast(dict[str, str], next(answers))
    ages_of = _oldest_ages(client, now, oldest, first_seen)
    ages = {queue: max(ages_of[name] for name in lists[queue]) for queue in QUEUE_ORDER}
    monitoring = heartbeats or bool(registered) or bool(summary)
    states = (json.loads(summary) if summary else {}) if monitoring else None
    return Snapshot(
        now=now,
        counters=counters,
        queues=queues,
        oldest_age=ages,
        unacked=unacked,
        dead_letters=dead,
        dead_letter_oldest_age=dead_oldest,
        heartbeat_states=states,
        heartbeat_check_age=_age(now, last_check) if states is not None else None,
        recovery_age=_age(now, recovery),
        watchdog_age=_age(now, watchdog_last) if watchdog else None,
        workers=_workers(now, seen, infos),
        worker_clock_skew=_clock_skew(now, seen, infos),
    )


def _age(now: float, raw: Any) -> float:
    return math.inf if raw is None else max(0.0, now - float(raw))


def _workers(
    now: float, seen: Sequence[tuple[str, float]], infos: dict[str, str]
) -> dict[str, int]:
    alive = {queue: 0 for queue in QUEUE_ORDER}
    for hostname, at in seen:
        if now - float(at) > ALIVE_SECONDS:
            continue
        info = json.loads(infos.get(hostname) or "{}")
        for queue in info.get("queues", []):
            alive[queue] = alive.get(queue, 0) + 1
    return alive


def _clock_skew(now: float, seen: Sequence[tuple[str, float]], infos: dict[str, str]) -> float:
    skews = [
        abs(float(json.loads(infos.get(hostname) or "{}").get("clock_skew", 0.0)))
        for hostname, at in seen
        if now - float(at) <= ALIVE_SECONDS
    ]
    return max(skews, default=0.0)


def _oldest_ages(
    client: redis.Redis, now: float, oldest: dict[str, Any], first_seen: dict[str, str]
) -> dict[str, float]:
    """Each list's oldest message's age: from the time a delivery message carries
    (``enqueued_at``); for others (``notify`` from any producer), since a scrape first saw
    it at the head of its queue, a lower bound as exact as the scrape interval."""
    ages: dict[str, float] = {}
    remember: dict[str, str] = {}
    for queue, raw in oldest.items():
        if raw is None:
            ages[queue] = 0.0
            continue
        message_id, enqueued_at = _identity(raw)
        if enqueued_at is not None:
            ages[queue] = max(0.0, now - enqueued_at)
            continue
        seen_id, _, seen_at = first_seen.get(queue, "").partition(" ")
        if seen_id == message_id and seen_at:
            ages[queue] = max(0.0, now - float(seen_at))
        else:
            ages[queue] = 0.0
            remember[queue] = f"{message_id} {now!r}"
    if remember:
        pipe = client.pipeline(transaction=False)
        for queue, seen in remember.items():
            pipe.hset(keys.QUEUE_OLDEST, queue, seen)
        # A Redis refusing writes: the scrape still reads, and says so (redis_writable).
        with contextlib.suppress(redis.ResponseError):
            pipe.execute()
    return ages


def _identity(raw: str) -> tuple[str, float | None]:
    """A queued message's id, and the time its job was accepted when it says."""
    try:
        envelope = json.loads(raw)
        message_id = str(envelope.get("headers", {}).get("id") or "")
        body = json.loads(base64.b64decode(envelope["body"]))
        job = body[0][0] if body and body[0] else None
        enqueued = job.get("enqueued_at") if isinstance(job, dict) else None
        return message_id, float(enqueued) if enqueued is not None else None
    except (ValueError, KeyError, TypeError, IndexError):
        return str(hash(raw)), None


def stamp(client: redis.Redis, key: str) -> None:
    """Record that something periodic (the recovery sweep, the watchdog) just ran, in
    Redis time, which the scrape compares with."""
    seconds, micros = client.time()
    client.set(key, repr(float(seconds) + micros / 1_000_000))


#: The longest a probe waits for replicas: inside the quick client's timeout (3 s).
PROBE_WAIT_CAP_SECONDS = 2.5


def refuses_writes(client: redis.Redis, replicas: int = 0, wait: float = 2.0) -> str | None:
    """Why Redis answers but will not take a write (out of memory, a read-only replica
    taken for the master, a failed snapshot stopping writes; or, with ``replicas``
    (``REDIS_MIN_REPLICAS``), fewer replicas than that confirming it within ``wait``
    seconds, as an accept waits: ``REDIS_WAIT_TIMEOUT``, at most 2.5 s here), or None when
    it takes one. Every job is a write: such a Redis accepts nothing and delivers nothing
    while it still answers reads and pings. A connection error is raised."""
    seconds = min(wait, PROBE_WAIT_CAP_SECONDS)
    pipe = client.pipeline(transaction=False)  # one connection: WAIT counts this write
    pipe.set(keys.WRITE_PROBE, "1", ex=60)
    if replicas:
        pipe.wait(replicas, int(seconds * 1000))
    # Errors as answers: raised, they carry redis-py's "Command # 1 (SET ...) of pipeline
    # caused error" before Redis' own words. A connection error is raised all the same.
    answers = pipe.execute(raise_on_error=False)
    refused = next((a for a in answers if isinstance(a, redis.ResponseError)), None)
    if refused is not None:
        return f"{type(refused).__name__}: {str(refused)[:200]}"
    if replicas and int(answers[1]) < replicas:
        return (
            f"too few replicas: {answers[1]} of the {replicas} REDIS_MIN_REPLICAS asks for "
            f"confirmed a write within {seconds:g} s, so no job is accepted"
        )
    return None
