"""What every scenario is handed: the stack, the sizes, the sandbox client, and the two
worker pools every pipeline scenario runs against."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from bench.measure import BenchError, wait_until
from bench.procfile import pool
from bench.sandbox_api import SandboxAPI
from bench.sizes import Sizes
from bench.stack import BenchStack
from cli.dev_stack import Service

T = TypeVar("T")


@dataclass
class Context:
    stack: BenchStack
    sizes: Sizes
    sandbox: SandboxAPI
    mail: SandboxAPI
    log: Callable[[str], None]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def deployed_pools(self, env: dict[str, str] | None = None) -> list[Service]:
        """The Procfile's ``pagerduty`` and ``email`` pools, one process each."""
        return self.stack.pools(
            [("pagerduty", pool("pagerduty")), ("email", pool("email"))], env=env
        )

    def ids(self, scenario: str, count: int) -> list[str]:
        """Idempotency ids unique to this run and scenario (they become dedup keys)."""
        return [f"bench-{self.run_id}-{scenario}-{i}" for i in range(count)]

    def wait_for_events(self, base_seq: int, count: int, timeout: float) -> None:
        """Wait until the emulator has recorded ``count`` requests after ``base_seq``."""
        wait_until(
            lambda: self.sandbox.last_seq() - base_seq >= count,
            timeout,
            f"{count} PagerDuty events at the sandbox",
            interval=0.05,
        )

    def wait_for_mail(self, count: int, what: str) -> float:
        """Wait until the SMTP sink holds ``count`` messages; returns when it received the
        newest (epoch seconds)."""
        wait_until(
            lambda: self.mail.message_count() >= count,
            max(120.0, count / 10),
            f"{count} {what} at the SMTP sink",
            interval=0.05,
        )
        return max(float(m["at"]) for m in self.mail.messages())

    def fresh_sandbox(self) -> int:
        """Forget what the sandbox saw; returns the request number to count from."""
        seq = self.sandbox.last_seq()
        self.sandbox.reset()
        return seq

    def produce(self, items: Sequence[T], send: Callable[[T], object]) -> tuple[float, float]:
        """Hand ``items`` to ``send`` from ``producer_threads`` threads at once, as several
        producers would (one Python thread alone cannot feed the pools); returns when the
        first started and the last returned (epoch seconds)."""
        threads = max(1, min(self.sizes.producer_threads, len(items)))
        chunks = [items[i::threads] for i in range(threads)]

        def feed(chunk: Sequence[T]) -> None:
            for item in chunk:
                send(item)

        started = time.time()
        with ThreadPoolExecutor(threads, thread_name_prefix="producer") as pool:
            list(pool.map(feed, chunks))
        return started, time.time()


def delivered_at(events: list[dict[str, object]], keys: set[str]) -> dict[str, float]:
    """When the sandbox accepted (202) each page whose dedup key is in ``keys``."""
    out: dict[str, float] = {}
    for event in events:
        body = event.get("body")
        if event.get("status") != 202 or not isinstance(body, dict):
            continue
        key = body.get("dedup_key")
        if isinstance(key, str) and key in keys and key not in out:
            out[key] = float(event["at"])  # type: ignore[arg-type]
    missing = len(keys) - len(out)
    if missing:
        raise BenchError(f"{missing} of {len(keys)} pages never reached the sandbox")
    return out


def pause(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
