"""The ASGI application: ``create_app()`` (uvicorn calls it: ``gds-notify api``).

FastAPI, because the request and response models are the pydantic models the rest of the
service already validates with, and it derives the OpenAPI schema and the docs page from
them; uvicorn serves it. Swagger UI's files come from the ``fastapi-offline`` package and
are served here, so ``/docs`` works with no access to a CDN.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api import errors
from api.auth import MaskKeysInPaths, bearer_token, refused_notifier
from api.body_limits import BodyLimits
from api.response_counts import COUNTS, counted
from api.routes import PING_ROUTES, ROUTERS
from config.settings import get_settings

TITLE = "GDS Notification Service"
DESCRIPTION = """
The HTTP door to the GDS Notification Service: the same intake as `tasks.enqueue` and the
Celery task `notify`. A **202** means the job is recorded in Redis and queued.

Authenticate with `Authorization: Bearer <token>` (a token configured in `API_TOKENS`, with
the scope each operation names). `/healthz`, `/readyz` and `/health` need no token.
"""


class PingsFirst:
    """Pings, the most frequent request by far, go straight to their own small app: they
    need none of the API's middleware but the bound on bodies, and skip the rest.

    A path with a slash at the end is the path without it (``/v1/alertmanager/`` in a
    webhook's config, a crontab's ``/ping/KEY/backup/``): no redirect, which a client that
    does not follow it takes for success, and a 404 would be a lost notification."""

    def __init__(self, api: FastAPI, pings: ASGIApp) -> None:
        self.api = api
        self.pings = pings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path[:-1]}
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # the lifespan: the API's own
        elif scope["path"].startswith("/ping/"):
            await counted(self.pings, scope, receive, send)
        else:
            await counted(self.api, scope, receive, send)


def _notify_bearer(scope: Scope) -> bool:
    """Whether the request carries a configured token that may send notifications."""
    token = bearer_token(Request(scope))
    return token is not None and token.allows("notify")


def create_app() -> PingsFirst:
    """The API, configured from the settings of this process."""
    settings = get_settings()
    limits: dict[str, Any] = {
        "max_bytes": settings.api_max_body_bytes,
        "read_timeout": settings.api_read_timeout,
    }
    if settings.api_docs:
        app = FastAPIOffline(
            docs_url="/docs",
            redoc_url=None,
            static_url="/docs/static",
            title=TITLE,
            version="1",
            description=DESCRIPTION,
        )
    else:
        app = FastAPI(title=TITLE, version="1", docs_url=None, redoc_url=None, openapi_url=None)
    # Alertmanager posts a whole group and does not retry a 413: in a wide outage the
    # group is largest, and refusing it would page nobody.
    wider = {
        "/v1/alertmanager": (
            settings.api_max_alertmanager_body_bytes,
            "API_MAX_ALERTMANAGER_BODY_BYTES",
        )
    }
    app.add_middleware(BodyLimits, **limits, by_path=wider, admits=_notify_bearer)
    errors.install(app, refused_notifier)
    for router in ROUTERS:
        app.include_router(router)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, MaskKeysInPaths) for f in access.filters):
        access.addFilter(MaskKeysInPaths())
    pings = Starlette(routes=PING_ROUTES, middleware=[Middleware(BodyLimits, **limits, cut=True)])
    # A slash at the end is dropped before routing (PingsFirst); a redirect would repeat
    # a ping's key in its Location.
    app.router.redirect_slashes = pings.router.redirect_slashes = False
    app.router.on_shutdown.append(COUNTS.flush)  # what this process counted last
    return PingsFirst(app, pings)
