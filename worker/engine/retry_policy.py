"""Retries, in one place: how long to wait after a failure, and when to give up.

- Permanent errors (``retryable`` False: a 400 rejection, SMTP 5xx, bad configuration)
  are dead-lettered at once.
- Rate limits wait at least what the server asked (Retry-After), else our backoff, plus a
  little jitter so throttled workers do not return in lockstep.
- Other transient errors back off exponentially with full jitter:
  ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``.
- Every delay stays below the broker's visibility timeout (a longer one makes Redis hand
  the job to a second worker), and a job is dead-lettered after ``max_attempts`` attempts
  or once the next try would fall after its deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from config.settings import Settings
from worker.exceptions import NotificationError, NotificationRateLimitError


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    base: float
    cap: float
    max_attempts: int
    deadline: float
    max_delay: float  # backoff ceiling: RETRY_CAP_SECONDS, under the visibility timeout
    hard_cap: float  # the longest any wait may be: 90% of the visibility timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base=settings.retry_base_seconds,
            cap=settings.retry_cap_seconds,
            max_attempts=settings.retry_max_attempts,
            deadline=settings.retry_deadline_seconds,
            max_delay=settings.max_delay_seconds,
            hard_cap=settings.celery_visibility_timeout * 0.9,
        )

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th failure (1-based)."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return min(self.max_delay, (rng or random).uniform(0, ceiling))

    def after_rate_limit(
        self, retry_after: float | None, attempt: int, rng: random.Random | None = None
    ) -> float:
        """At least ``retry_after`` (or a backoff when the server gave none), plus jitter."""
        r = rng or random
        wait = (
            retry_after if retry_after is not None else max(self.base, self.backoff(attempt, rng))
        )
        # Retry-After is honoured beyond RETRY_CAP_SECONDS, but never past the visibility
        # timeout; a longer pause is kept by the shared limiter, which defers the job again.
        return min(self.hard_cap, wait + r.uniform(0, 0.1 * wait + 0.25))

    def deferral(self, wait: float, rng: random.Random | None = None) -> float:
        """How long to put a job aside when our own limiter says wait ``wait`` seconds."""
        return min(self.hard_cap, wait + (rng or random).uniform(0, 0.05 + 0.1 * wait))

    def decide(
        self,
        error: NotificationError,
        attempt: int,
        age: float,
        rng: random.Random | None = None,
    ) -> Decision:
        """What to do after the ``attempt``-th attempt failed ``age`` seconds after enqueue."""
        if not error.retryable:
            return Decision(False, 0.0, f"permanent error: {error}")
        if attempt >= self.max_attempts:
            return Decision(False, 0.0, f"gave up after {attempt} attempts: {error}")
        if isinstance(error, NotificationRateLimitError):
            delay = self.after_rate_limit(error.retry_after_seconds, attempt, rng)
        else:
            delay = self.backoff(attempt, rng)
        if age + delay > self.deadline:
            return Decision(
                False,
                0.0,
                f"deadline of {self.deadline:g}s passed after {attempt} attempts: {error}",
            )
        return Decision(True, delay, f"retrying in {delay:.2f}s: {error}")
