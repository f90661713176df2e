"""One module per scenario, run in this order (the pipeline's ratio needs the baseline).

Each has ``NAME`` and ``run(ctx) -> dict``: the figures it writes at the top level of the
results, plus ``"details"`` with what explains them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from bench.context import Context
from bench.scenarios import email, heartbeat, latency, noop, pipeline, throttled

ORDER: tuple[ModuleType, ...] = (noop, pipeline, latency, email, throttled, heartbeat)
SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {m.NAME: m.run for m in ORDER}

__all__ = ["SCENARIOS"]
