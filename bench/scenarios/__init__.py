"""The scenarios, run in this order. ``baselines``, ``pipeline`` and ``alertmanager`` are
the parts that ``throughput`` and ``email`` alternate, not scenarios of their own.
``enqueue``, ``api`` and ``pings`` run first, before any worker pool is started.

Each has ``NAME`` and ``run(ctx) -> dict``: the figures it writes at the top level of the
results, plus ``"details"`` with what explains them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from bench.context import Context
from bench.scenarios import (
    api,
    email,
    enqueue,
    heartbeat,
    latency,
    pings,
    scrape,
    step,
    throttled,
    throughput,
)

ORDER: tuple[ModuleType, ...] = (
    enqueue,
    api,
    pings,
    throughput,
    latency,
    email,
    throttled,
    heartbeat,
    scrape,
    step,
)
SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {m.NAME: m.run for m in ORDER}

__all__ = ["SCENARIOS"]
