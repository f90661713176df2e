"""A heartbeat arriving: validated against the catalogue and stored, or refused with the
field named and counted (never stored: the slug may be anything a caller sent)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from config.catalogue import Catalogue, UnknownServiceError
from worker.engine.heartbeats.store import HeartbeatInFutureError, HeartbeatStatus
from worker.engine.runtime import Engine
from worker.exceptions import NotificationConfigError


class InvalidHeartbeatError(ValueError):
    """A heartbeat whose ``status`` or ``at`` cannot be used; the message names the field."""


def configured_catalogue(engine: Engine) -> Catalogue:
    """The catalogue in force, or NotificationConfigError when none is configured."""
    catalogue = engine.catalogue()
    if catalogue is None:
        raise NotificationConfigError(
            "heartbeat monitoring is not configured: HEARTBEAT_SERVICES_FILE is not set"
        )
    return catalogue


def parse_status(status: Any) -> HeartbeatStatus:
    if status in ("up", "fail"):
        return status  # type: ignore[no-any-return]
    raise InvalidHeartbeatError(f"status: must be 'up' or 'fail' (got {status!r})")


def parse_at(at: Any) -> float | None:
    """Epoch seconds from None, a number, an ISO 8601 string or a datetime (naive = UTC)."""
    if at is None:
        return None
    if isinstance(at, bool):
        raise InvalidHeartbeatError("at: must be an ISO 8601 time or epoch seconds")
    if isinstance(at, int | float):
        return float(at)
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidHeartbeatError(
                f"at: must be an ISO 8601 time or epoch seconds (got {at[:64]!r})"
            ) from None
    if isinstance(at, datetime):
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    raise InvalidHeartbeatError(
        f"at: must be an ISO 8601 time or epoch seconds, not {type(at).__name__}"
    )


def record(engine: Engine, slug: Any, status: Any = "up", at: Any = None) -> float:
    """Validate and store one heartbeat; return its time (epoch seconds, Redis clock).

    Raises :class:`UnknownServiceError` for a slug not in the catalogue,
    :class:`InvalidHeartbeatError` for a bad ``status`` or ``at``, and
    :class:`NotificationConfigError` when no catalogue is configured.
    """
    catalogue = configured_catalogue(engine)
    store = engine.heartbeats
    spec = catalogue.get(slug) if isinstance(slug, str) else None
    if spec is None:
        store.refuse("unknown_slug")
        shown = repr(slug[:100]) if isinstance(slug, str) else type(slug).__name__
        raise UnknownServiceError(
            f"slug: unknown service {shown}: not in the heartbeat catalogue "
            f"({len(catalogue.services)} services); heartbeat refused"
        )
    try:
        return store.record(spec, parse_status(status), parse_at(at))
    except (InvalidHeartbeatError, HeartbeatInFutureError):
        store.refuse("invalid")
        raise
