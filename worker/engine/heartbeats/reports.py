"""A heartbeat arriving: validated against the catalogue and stored, or refused with the
field named and counted (never stored: the slug may be anything a caller sent)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from config.catalogue import Catalogue, ServiceSpec, UnknownServiceError
from config.moments import parse_time
from worker.engine.heartbeats.paging import check_soon
from worker.engine.heartbeats.store import HeartbeatInFutureError, HeartbeatStatus, Ping
from worker.engine.runtime import Engine
from worker.exceptions import NotificationConfigError


class InvalidHeartbeatError(ValueError):
    """A heartbeat whose ``status`` or ``at`` cannot be used; the message names the field."""


def configured_catalogue(engine: Engine) -> Catalogue:
    """The catalogue in force, or NotificationConfigError when none is configured."""
    catalogue = engine.catalogue()
    if catalogue is None:
        raise NotificationConfigError(
            "heartbeat monitoring is not configured: HEARTBEAT_SERVICES_FILE is not set "
            "and no service is registered"
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
        try:
            seconds = float(at)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
        if not math.isfinite(seconds):
            raise InvalidHeartbeatError(
                f"at: must be a finite number of epoch seconds (got {at!r:.64})"
            )
        return seconds
    if isinstance(at, str):
        try:
            return parse_time(at)
        except ValueError:
            raise InvalidHeartbeatError(
                f"at: must be an ISO 8601 time or epoch seconds (got {at[:64]!r})"
            ) from None
    if isinstance(at, datetime):
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    raise InvalidHeartbeatError(
        f"at: must be an ISO 8601 time or epoch seconds, not {type(at).__name__}"
    )


def find(engine: Engine, slug: Any) -> ServiceSpec:
    """The monitored service ``slug`` (in the file or registered), or
    :class:`UnknownServiceError`, counted: an unknown name is refused, never stored."""
    spec = engine.service(slug) if isinstance(slug, str) else None
    if spec is not None:
        return spec
    engine.heartbeats.refuse("unknown_slug")
    shown = repr(slug[:100]) if isinstance(slug, str) else type(slug).__name__
    catalogue = engine.catalogue()
    if catalogue is None:
        raise UnknownServiceError(
            f"slug: unknown service {shown}: heartbeat monitoring is not configured "
            "(HEARTBEAT_SERVICES_FILE is not set and no service is registered)"
        )
    raise UnknownServiceError(
        f"slug: unknown service {shown}: not in the heartbeat catalogue "
        f"({len(catalogue.services)} services); heartbeat refused"
    )


def ping(engine: Engine, spec: ServiceSpec, ping: Ping, key: str | None = None) -> float:
    """Store one ping for a known service; return its time (epoch seconds, Redis clock).
    With ``key`` (a ping key's name), the key's rate (``PING_RATE_LIMIT``) admits it first,
    in the same round trip (:class:`TooManyPings` beyond). A time too far ahead raises
    :class:`HeartbeatInFutureError`, counted."""
    rate = (engine.ping_limiter, key) if key is not None else None
    try:
        at = engine.heartbeats.record(spec, ping, rate)
    except HeartbeatInFutureError:
        engine.heartbeats.refuse("invalid")
        raise
    if ping.kind == "fail":
        check_soon(engine)  # whichever door it came through: HTTP, Medic, Celery, the CLI
    return at


def record(engine: Engine, slug: Any, status: Any = "up", at: Any = None) -> float:
    """Validate and store one heartbeat; return its time (epoch seconds, Redis clock).

    Raises :class:`UnknownServiceError` for a slug that is not monitored and
    :class:`InvalidHeartbeatError` for a bad ``status`` or ``at``.
    """
    spec = find(engine, slug)
    try:
        heartbeat = Ping(kind=parse_status(status), at=parse_at(at))
    except InvalidHeartbeatError:
        engine.heartbeats.refuse("invalid")
        raise
    return ping(engine, spec, heartbeat)
