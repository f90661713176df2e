"""A per-key sliding-window rate limit, like PagerDuty's ~120 events a minute per key."""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class SlidingWindowLimiter:
    """At most ``limit`` events per key in any ``window`` seconds; ``limit=0`` turns it off."""

    def __init__(self, limit: int = 120, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def acquire(self, key: str, now: float | None = None) -> float | None:
        """Count an event for ``key`` and return None, or, when over the limit, count
        nothing and return the seconds until the window has room again."""
        if self.limit <= 0:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(0.0, hits[0] + self.window - now)
            hits.append(now)
            return None

    @staticmethod
    def header_value(wait: float) -> str:
        """Retry-After in whole seconds, rounded up so a client that obeys it is let in."""
        return str(max(1, math.ceil(wait)))

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
