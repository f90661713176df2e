"""Reading Redis within one deadline, for the scrape and the readiness probe.

redis-py's timeouts bound each call, not a sequence of them. A Redis that answers every
call just inside ``QUICK_TIMEOUT_SECONDS`` (swapping, a saturated link, a slow disk under
``appendfsync always``) made a scrape of six round trips take 15 s: past Prometheus'
10 s scrape timeout, so the target looked down (``GdsNotifyTargetDown``, "restart the
API") and ``gds_notify_redis_up 0`` was never seen. A read run through a
:class:`SingleFlight` gives up after its budget, and the caller reports Redis as down.

The read itself cannot be interrupted, so it finishes in a thread of its own. Each purpose
has one such thread: while its read is still running, a new caller waits on that same
read, and for what is left of its budget, rather than starting another; so probes of a
slow Redis never pile up threads, and a read that ran past its budget never counts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

import redis

T = TypeVar("T")

#: How long a scrape or readiness probe waits for all its Redis reads together: inside
#: Prometheus' default scrape timeout (10 s) with room for the answer itself.
BUDGET_SECONDS = 5.0


class TooSlow(redis.TimeoutError):
    """Redis did not answer every read within the budget: a Redis error like any other to
    the caller, which reports Redis as down."""


class SingleFlight(Generic[T]):
    """One read at a time for one purpose, waited for at most a budget."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._executor: ThreadPoolExecutor | None = None
        self._running: Future[T] | None = None
        self._began = 0.0

    def idle(self) -> bool:
        """Whether no read is running (one that ran past its budget may still be)."""
        with self._lock:
            return self._running is None or self._running.done()

    def run(self, read: Callable[[], T], seconds: float = BUDGET_SECONDS) -> T:
        """``read()``'s result, or :class:`TooSlow` once ``seconds`` have passed since the
        read began. A read already running for this purpose is waited for (what is left of
        its ``seconds``) instead of starting ``read`` again."""
        with self._lock:
            if self._pid != os.getpid():  # a forked server process: the thread stayed behind
                self._pid, self._executor, self._running = os.getpid(), None, None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
            if self._running is None or self._running.done():
                self._began = time.monotonic()
                self._running = self._executor.submit(read)
            running, deadline = self._running, self._began + seconds
        try:
            return running.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise TooSlow(f"Redis did not answer within {seconds:g} s") from None
