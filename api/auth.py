"""Who is calling: a bearer token, or a key in the path (ping URLs, the Medic-style API),
whether its scopes allow the call, and whether it is within its request rate (shared by
every API process through Redis). Tokens are configured as hashes (config/api_tokens.py)
and never logged: the access log shows a key in a path by its last four characters."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Literal

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import paths
from api.errors import ApiError, forbidden, too_many, unauthorized
from config.api_tokens import ApiToken, Scope, find_token
from worker.engine import keys
from worker.engine.rate_limit import SharedRateLimiter, Slot
from worker.engine.runtime import Engine, engine

#: Documents the scheme in the OpenAPI schema; the check itself is :func:`require`.
bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer gdsn_…`")


@functools.lru_cache(maxsize=4)
def _api_limiter(eng: Engine) -> SharedRateLimiter:
    return SharedRateLimiter(eng.redis, eng.settings.api_rate_limit, keys.API_RATE)


def authorize(
    secret: str, scope: Scope, rate: Literal["api", "ping"] | None = "api", why: str = ""
) -> ApiToken:
    """The token ``secret`` is, if it may act in ``scope`` and (unless ``rate`` is None:
    the caller counts it itself) is within its rate, ``API_RATE_LIMIT`` or
    ``PING_RATE_LIMIT``. ``why`` follows the 403's reason: what the routes take."""
    eng = engine()
    token = _configured(secret)
    if not token.allows(scope):
        raise forbidden(f"token {token.name!r} does not have the {scope!r} scope{why}")
    if rate is not None:
        limiter = _api_limiter(eng) if rate == "api" else eng.ping_limiter
        wait = limiter.acquire(token.name)
        if not isinstance(wait, Slot):
            raise too_many(wait)
    return token


def _configured(secret: str | None) -> ApiToken:
    """The configured token ``secret`` is; 401 when there is none, or it is not one."""
    if not secret:
        raise unauthorized("no API token: send `Authorization: Bearer <token>`")
    token = find_token(engine().settings.tokens, secret)
    if token is None:
        raise unauthorized("this API token is not configured (API_TOKENS)")
    return token


def bearer_secret(request: Request) -> str:
    """The secret of the request's ``Authorization: Bearer`` header, or ""."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def bearer_token(request: Request) -> ApiToken | None:
    """The configured token the request's bearer names, or None: no check of scope or rate."""
    secret = bearer_secret(request)
    return find_token(engine().settings.tokens, secret) if secret else None


def refused_notifier(request: Request) -> ApiError | None:
    """Why the request's bearer token would be refused at a door that takes notifications
    (401 unknown, 403 without the ``notify`` scope), or None: for a request refused before
    its route's own check could run. Nothing is counted against its rate."""
    try:
        token = _configured(bearer_secret(request))
    except ApiError as refused:
        return refused
    if not token.allows("notify"):
        return forbidden(f"token {token.name!r} does not have the 'notify' scope")
    return None


def require(scope: Scope, why: str = "") -> Callable[..., ApiToken]:
    """A dependency: the bearer token, if it may act in ``scope`` and is within its rate."""

    def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> ApiToken:
        token = authorize(credentials.credentials if credentials else "", scope, why=why)
        request.state.token = token
        return token

    return check


def path_key(scope: Scope, why: str = "") -> Callable[..., ApiToken]:
    """A dependency: the key in the path (``{key}``), as :func:`require` checks a bearer."""

    def check(request: Request, key: str) -> ApiToken:
        token = authorize(key, scope, "ping", why)
        request.state.token = token
        return token

    return check


def calling_token(request: Request) -> ApiToken:
    """The token the route's dependency accepted."""
    token = getattr(request.state, "token", None)
    if not isinstance(token, ApiToken):
        raise ApiError(500, "no token was checked for this route")
    return token


class MaskKeysInPaths(logging.Filter):
    """uvicorn's access log writes the path: keep a key in it to its last four characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], paths.masked(args[2]), *args[3:])
        return True
