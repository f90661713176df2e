"""A moment a person names: a duration ago (``2h``) or an ISO 8601 time."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime

from config.catalogue import parse_duration


def parse_since(value: str, now: float | None = None) -> float:
    """The epoch seconds ``value`` names: a duration before ``now`` (``90s``, ``30m``,
    ``2h``, ``1d``) or an ISO 8601 time (UTC when it names no zone). Raises ValueError
    saying which forms are taken."""
    with contextlib.suppress(ValueError):
        return (time.time() if now is None else now) - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value[:64]!r}: a duration ('30m', '2h', '1d') or an ISO 8601 time"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
