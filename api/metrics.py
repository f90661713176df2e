"""The pool's metrics in Prometheus' text format: ``GET /metrics`` on the API server and
``gds-notify metrics --port N`` where no API runs.

Nothing here counts: every value is read from Redis at scrape time
(worker/engine/stats.py), so any API process, or the metrics command, answers for the whole
pool and every scrape of any of them agrees. When Redis cannot be read the scrape still
succeeds, with ``gds_notify_redis_up 0`` and the build info only: Prometheus then knows
that Redis, not the notifier's web server, is what failed. A Redis that hangs rather than
refuses, or answers each read too slowly, counts as down after ``BUDGET_SECONDS`` for all
the scrape's reads together (api/redis_deadline.py), inside Prometheus' scrape timeout.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from itertools import product

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.redis_deadline import BUDGET_SECONDS, SingleFlight
from api.response_counts import NAME, route_templates
from worker.channels import Channel
from worker.engine import stats
from worker.engine.heartbeats.store import REFUSED
from worker.engine.jobs import oldest_undelivered
from worker.engine.keys import DEAD_LETTER_CHANNELS
from worker.engine.runtime import Engine, engine
from worker.exceptions import NotificationConfigError

PREFIX = "gds_notify_"
#: The doors notifications come in by, and the channels they go out on.
SOURCES = ("enqueue", "notify", "api", "ingest", "alertmanager", "heartbeat", "replay", "refused")
CHANNELS = tuple(c.value for c in Channel)
#: Heartbeat states always exported, so a rule can compare them even at zero.
HEARTBEAT_STATES = ("new", "up", "failing", "down", "inactive")


def _build() -> dict[str, str]:
    try:
        ours = version("gds-notification")
    except PackageNotFoundError:
        ours = "unknown"
    return {"version": ours, "python": platform.python_version()}


def _counter(
    name: str,
    doc: str,
    labels: list[str],
    snap: stats.Snapshot,
    known: Iterable[tuple[str, ...]] = (),
) -> Metric:
    """A counter family; the ``known`` label sets appear from the start, at 0, so that
    ``increase()`` sees their first event."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    values = {tuple(k): 0.0 for k in known}
    for label_values, value in snap.labelled(name):
        if len(label_values) == len(labels):
            values[tuple(label_values)] = value
    for label_set, value in sorted(values.items()):
        family.add_metric(list(label_set), value)
    return family


def _histogram(name: str, doc: str, snap: stats.Snapshot) -> Metric:
    family = HistogramMetricFamily(PREFIX + name + "_seconds", doc, labels=["channel"])
    for channel, (buckets, total) in snap.histograms(name).items():
        family.add_metric([channel], buckets, total)
    return family


def _gauge(name: str, doc: str, values: dict[str, float], label: str) -> Metric:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _single(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


REDIS_UP_HELP = f"Whether this scrape read Redis, every read within {BUDGET_SECONDS:g} s."

#: The scrape's Redis reads, one set in flight at a time (api/redis_deadline.py).
READS: SingleFlight[tuple[stats.Snapshot, dict[str, float], str | None]] = SingleFlight(
    "metrics-redis"
)


def _read(eng: Engine) -> tuple[stats.Snapshot, dict[str, float], str | None]:
    snap = stats.snapshot(
        eng.quick_redis,
        watchdog=eng.settings.watchdog_url is not None,
        heartbeats=eng.settings.heartbeat_services_file is not None,
    )
    late = oldest_undelivered(eng.quick_redis, snap.now)
    return (
        snap,
        late,
        stats.refuses_writes(
            eng.quick_redis, eng.settings.redis_min_replicas, eng.settings.redis_wait_timeout
        ),
    )


class PoolCollector(Collector):
    """Every metric of the pool, read from Redis at each collection."""

    def __init__(self) -> None:
        self.build = _build()

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(PREFIX + "build", "The notifier's version.", value=self.build)
        eng = engine()
        try:
            snap, late, refused = READS.run(lambda: _read(eng))
        except redis.RedisError:
            yield _single("redis_up", REDIS_UP_HELP, 0)
            return
        yield _single("redis_up", REDIS_UP_HELP, 1)
        yield _single(
            "redis_writable",
            "Whether Redis took this scrape's write (0: out of memory, read-only, ...).",
            0 if refused else 1,
        )
        yield from self._counters(snap)
        yield _histogram("delivery_latency", "From enqueue to delivered, per channel.", snap)
        yield _histogram(
            "provider_call", "Each attempt's call to PagerDuty or the SMTP server.", snap
        )
        yield from self._gauges(snap)
        if eng.settings.heartbeat_services_file is not None:
            yield _single(
                "heartbeat_catalogue_refused",
                "1 when the services file's last edit was refused (the last good one is "
                "still in force; a worker or beat started now would stop).",
                self._catalogue_refused(eng),
            )
        yield _gauge(
            "oldest_undelivered_seconds",
            "How long ago the oldest notification not yet delivered (or dead) on a channel "
            "was accepted, whatever holds it: queue, rate limiter, retries, a lost message.",
            late,
            "channel",
        )

    @staticmethod
    def _catalogue_refused(eng: Engine) -> float:
        try:
            return 1.0 if eng.catalogue_refused() is not None else 0.0
        except NotificationConfigError:  # not even a first good version: as bad
            return 1.0

    def _counters(self, snap: stats.Snapshot) -> Iterator[Metric]:
        yield _counter(
            "notifications",
            "Notifications that came in, by door and what became of them.",
            ["source", "outcome"],
            snap,
            product(SOURCES, ("accepted", "duplicate", "invalid")),
        )
        yield _counter(
            "deliveries",
            "Delivery attempts' endings: delivered, retried, deferred (rate limit), dead.",
            ["channel", "outcome"],
            snap,
            product(CHANNELS, ("delivered", "retried", "deferred", "dead")),
        )
        yield _counter(
            "delivery_failures", "Failed attempts, by error class.", ["channel", "error"], snap
        )
        yield _counter(
            "pagerduty_throttled",
            "429 answers from PagerDuty, by the team whose key was used.",
            ["team"],
            snap,
        )
        yield _counter(
            "pagerduty_deferred",
            "Pages held back by the shared rate limiter, by team.",
            ["team"],
            snap,
        )
        yield _counter(
            "heartbeats",
            "Heartbeat pings stored, by kind.",
            ["status"],
            snap,
            [("up",), ("fail",), ("start",), ("log",)],
        )
        yield _counter(REFUSED, "Heartbeats refused, by reason.", ["reason"], snap)
        yield _counter(
            "watchdog_pings",
            "Watchdog calls, by result.",
            ["result"],
            snap,
            [("ok",), ("fail",), ("error",)],
        )
        yield _counter(
            NAME,
            "The HTTP API's answers, by route (its template, or other) and status code; "
            "each API process writes its counts once a second.",
            ["route", "code"],
            snap,
            # At 0 from the start, so that GdsNotifyApiErrors' increase() sees a first 500.
            [(route, "500") for route in route_templates()],
        )
        yield _counter(
            "dead_lettered",
            "Dead letters written, by channel (pagerduty, email, intake, broker); each "
            "counted once, whatever is replayed or purged later.",
            ["channel"],
            snap,
            [(c,) for c in DEAD_LETTER_CHANNELS],
        )
        yield _counter(
            "recovered",
            "Deliveries the recovery sweep published again: lost (a page, or its retry, "
            "the broker lost before a worker took it), abandoned (its worker died in an "
            "attempt: the claim lapsed with no outcome recorded) or stalled (no progress "
            "for JOB_STALL_SECONDS); and intake (a notify or heartbeat message a worker "
            "died holding, put back on its queue).",
            ["reason"],
            snap,
            [("lost",), ("abandoned",), ("stalled",), ("intake",)],
        )

    def _gauges(self, snap: stats.Snapshot) -> Iterator[Metric]:
        yield _gauge(
            "queue_messages", "Messages waiting in each queue.", dict(snap.queues), "queue"
        )
        yield _gauge(
            "queue_oldest_message_age_seconds",
            "Age of the oldest waiting message (0 when the queue is empty).",
            snap.oldest_age,
            "queue",
        )
        yield _single(
            "unacked_messages", "Messages a worker took and has not acknowledged.", snap.unacked
        )
        yield _gauge(
            "dead_letters",
            "Dead letters kept, by channel.",
            {k: float(v) for k, v in snap.dead_letters.items()},
            "channel",
        )
        yield _gauge(
            "dead_letter_oldest_age_seconds",
            "Seconds since the oldest kept dead letter of each channel died (0 when none): "
            "how long it has waited for a replay or a removal.",
            snap.dead_letter_oldest_age,
            "channel",
        )
        yield _single(
            "worker_clock_skew_seconds",
            "The largest difference, either way, between a live worker's clock and Redis's.",
            snap.worker_clock_skew,
        )
        yield _gauge(
            "workers_alive",
            "Workers that reported in the last 30 s, by queue consumed.",
            {k: float(v) for k, v in snap.workers.items()},
            "queue",
        )
        if snap.heartbeat_states is not None:
            states = {s: float(snap.heartbeat_states.get(s, 0)) for s in HEARTBEAT_STATES}
            yield _gauge("heartbeat_services", "Monitored services by state.", states, "state")
            yield _single(
                "heartbeat_check_age_seconds",
                "Seconds since the last heartbeat check.",
                _finite(snap.heartbeat_check_age),
            )
        yield _single(
            "recovery_sweep_age_seconds",
            "Seconds since the last recovery sweep (scheduled by beat).",
            _finite(snap.recovery_age),
        )
        if snap.watchdog_age is not None:
            yield _single(
                "watchdog_age_seconds",
                "Seconds since the watchdog canary last came through.",
                _finite(snap.watchdog_age),
            )


def _finite(age: float | None) -> float:
    """Never happened: +Inf, which every "older than" rule treats as too old."""
    return math.inf if age is None else age


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(PoolCollector())
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition() -> bytes:
    """One scrape, in Prometheus' text format."""
    return generate_latest(REGISTRY)
