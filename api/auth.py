"""Bearer tokens: who is calling, whether the token's scopes allow the call, and whether
the token is within its request rate (``API_RATE_LIMIT``, shared by every API process
through Redis). Tokens are configured as hashes (config/api_tokens.py) and never logged."""

from __future__ import annotations

import functools
from collections.abc import Callable

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import forbidden, too_many, unauthorized
from config.api_tokens import ApiToken, Scope, find_token
from worker.engine import keys
from worker.engine.rate_limit import SharedRateLimiter, Slot
from worker.engine.runtime import Engine, engine

#: Documents the scheme in the OpenAPI schema; the check itself is :func:`require`.
bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer gdsn_…`")


@functools.lru_cache(maxsize=4)
def _limiter(eng: Engine) -> SharedRateLimiter:
    return SharedRateLimiter(eng.redis, eng.settings.api_rate_limit, keys.API_RATE)


def require(scope: Scope) -> Callable[..., ApiToken]:
    """A dependency: the calling token, if it may act in ``scope`` and is within its rate."""

    def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> ApiToken:
        if credentials is None:
            raise unauthorized("no API token: send `Authorization: Bearer <token>`")
        eng = engine()
        token = find_token(eng.settings.tokens, credentials.credentials)
        if token is None:
            raise unauthorized("this API token is not configured (API_TOKENS)")
        if not token.allows(scope):
            raise forbidden(f"token {token.name!r} does not have the {scope!r} scope")
        wait = _limiter(eng).acquire(token.name)
        if not isinstance(wait, Slot):
            raise too_many(wait)
        request.state.token = token.name
        return token

    return check
