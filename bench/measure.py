"""Small measuring helpers: percentiles, waiting, memory, queue depth, CPU time."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import redis

T = TypeVar("T")


class BenchError(RuntimeError):
    """A scenario could not produce an honest figure (something was lost, or timed out)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of durations given in seconds, in milliseconds."""
    return {f"p{q}": round(percentile(seconds, q) * 1000, 2) for q in (50, 95, 99)}


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something truthy; BenchError after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc, else ``ps``)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis (kombu keeps each queue as a list)."""
    return int(client.llen(queue))


def in_flight(client: redis.Redis) -> int:
    """Messages workers hold but have not acknowledged (kombu's ``unacked`` hash)."""
    return int(client.hlen("unacked"))


def drained(client: redis.Redis, queues: Sequence[str]) -> bool:
    """Every queue empty and nothing held unacknowledged."""
    pipe = client.pipeline(transaction=True)
    for queue in queues:
        pipe.llen(queue)
    pipe.hlen("unacked")
    return not any(pipe.execute())


def wait_drained(client: redis.Redis, queues: Sequence[str], timeout: float) -> float:
    """Wait until ``queues`` are drained, seen twice 5 ms apart (a message a worker has just
    popped is briefly in neither place); returns the time of the first sighting."""
    end = time.monotonic() + timeout
    while True:
        if drained(client, queues):
            seen = time.time()
            time.sleep(0.005)
            if drained(client, queues):
                return seen
        if time.monotonic() > end:
            raise BenchError(f"queues {', '.join(queues)} not drained within {timeout:.0f} s")
        time.sleep(0.005)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far, all its threads (Linux
    /proc; 0.0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_ms(calls: Sequence[Callable[[], object]]) -> float:
    """CPU milliseconds this thread spent making ``calls``, one after another, in all."""
    started = time.thread_time()
    for call in calls:
        call()
    return (time.thread_time() - started) * 1000


class CpuMeter:
    """CPU time of named processes per unit of work, summed over rounds: what each process
    spends per 1,000 pages or emails."""

    def __init__(self) -> None:
        self.spent: dict[str, dict[str, float]] = {}
        self.items: dict[str, int] = {}

    @contextlib.contextmanager
    def measure(self, label: str, items: int, pids: dict[str, int | None]) -> Iterator[None]:
        """Charge the CPU ``pids`` use inside the block to ``items`` of ``label``."""
        known = {name: pid for name, pid in pids.items() if pid}
        before = {name: cpu_seconds(pid) for name, pid in known.items()}
        yield
        spent = self.spent.setdefault(label, {})
        for name, pid in known.items():
            spent[name] = spent.get(name, 0.0) + cpu_seconds(pid) - before[name]
        self.items[label] = self.items.get(label, 0) + items

    def per_thousand_ms(self) -> dict[str, dict[str, float]]:
        """Milliseconds of CPU per 1,000 items, per label and process (and their total)."""
        out: dict[str, dict[str, float]] = {}
        for label, spent in self.spent.items():
            per = {name: round(s * 1000 * 1000 / self.items[label], 1) for name, s in spent.items()}
            per["total"] = round(sum(per.values()), 1)
            out[label] = per
        return out
