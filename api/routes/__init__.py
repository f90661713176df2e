"""The API's routes, one module per kind of caller; ``ROUTERS`` is the order they mount in."""

from __future__ import annotations

from api.routes import (
    alertmanager,
    dead_letters,
    health,
    incidents,
    ingest,
    jobs,
    medic,
    metrics,
    notifications,
    pings,
)

ROUTERS = (
    notifications.router,
    incidents.router,
    jobs.router,
    dead_letters.router,
    ingest.router,
    alertmanager.router,
    medic.bearer_router,
    medic.keyed_router,
    health.router,
    metrics.router,
)
#: Plain Starlette routes, for the requests that must cost least: pings.
PING_ROUTES = pings.ROUTES
