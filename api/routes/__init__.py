"""The API's routes, one module per kind of caller; ``ROUTERS`` is the order they mount in."""

from __future__ import annotations

from api.routes import alertmanager, dead_letters, health, incidents, ingest, jobs, notifications

ROUTERS = (
    notifications.router,
    incidents.router,
    jobs.router,
    dead_letters.router,
    ingest.router,
    alertmanager.router,
    health.router,
)
