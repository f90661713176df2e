"""How much work each scenario does: the full run (``make bench``) and the smoke run
(``--smoke``, seconds long, for the test suite; its figures mean nothing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    enqueue_notifications: int = 3_000  # per round, for each of the two checkouts
    api_connections: int = 16  # wrk's open connections
    api_seconds: int = 10
    api_workers: int = 2  # gds-notify api --workers, as the Procfile runs it
    ping_services: int = 1_000  # services the pings are spread over
    noop_tasks: int = 12_000
    throughput_rounds: int = 3  # baseline and pipeline alternate this many times
    pipeline_notifications: int = 6_000
    warmup: int = 50
    producer_threads: int = 4  # threads calling tasks.enqueue / send_task at once
    latency_pages: int = 300  # for each of the two conditions
    latency_rounds: int = 4  # the conditions alternate this many times
    latency_interval: float = 0.02  # seconds between pages: a trickle, never a burst
    backlog_emails: int = 10_000
    email_messages: int = 3_000
    raw_smtp_messages: int = 3_000
    throttled_triggers: int = 600
    throttled_rate: int = 10  # per second per routing key, at the sandbox and our limiter
    heartbeat_services: int = 10_000
    heartbeat_repeats: int = 3  # steady-state evaluations; the median is reported
    scrape_queued: int = 1_000_000  # messages waiting while /metrics is scraped
    scrape_dead_letters: int = 10_000
    scrape_repeats: int = 20
    # Per channel, in the harness's thread: this many steps untimed, as many timed part by
    # part, and as many bare sends.
    step_jobs: int = 3_000

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes()
SMOKE = Sizes(
    enqueue_notifications=50,
    api_connections=4,
    api_seconds=1,
    api_workers=1,
    ping_services=20,
    noop_tasks=200,
    throughput_rounds=1,
    pipeline_notifications=100,
    warmup=5,
    latency_pages=20,
    latency_rounds=2,
    latency_interval=0.01,
    backlog_emails=200,
    email_messages=50,
    raw_smtp_messages=50,
    throttled_triggers=30,
    throttled_rate=20,
    heartbeat_services=200,
    heartbeat_repeats=1,
    scrape_queued=1_000,
    scrape_dead_letters=30,
    scrape_repeats=2,
    step_jobs=30,
)
