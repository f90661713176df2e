"""Durations and moments as a person writes them: ``90s``, ``2h``; a duration ago, or an
ISO 8601 time."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import UTC, datetime
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"5m"``, ``"1h"``, ``"1d"`` or ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration: seconds, or a string like '90s', '5m', '1h'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(
        f"must be a duration: seconds, or a string like '90s', '5m', '1h' (got {value!r})"
    )


def parse_since(value: str, now: float | None = None) -> float:
    """The epoch seconds ``value`` names: a duration before ``now`` (``90s``, ``30m``,
    ``2h``, ``1d``) or an ISO 8601 time (UTC when it names no zone). Raises ValueError
    saying which forms are taken."""
    with contextlib.suppress(ValueError):
        return (time.time() if now is None else now) - parse_duration(value)
    try:
        return parse_time(value)
    except ValueError:
        raise ValueError(
            f"{value[:64]!r}: a duration ('30m', '2h', '1d') or an ISO 8601 time"
        ) from None


def parse_time(value: str) -> float:
    """The epoch seconds of an ISO 8601 time (``Z`` for UTC; UTC when it names no zone);
    ValueError when it is none."""
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
