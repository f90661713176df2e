"""Healthchecks-style ping URLs, so a crontab line switches by changing its URL:
``/ping/{key}/{slug}``, or ``/ping/{uuid}`` for a service the file gives Healthchecks'
UUID (``ping_uuid``), and their suffixes ``/start``, ``/fail``, ``/log`` and
``/{exit_status}`` (0 is success, 1-255 failure), by HEAD, GET or POST, with an optional
``?rid=`` tying a start to its finish. The key in the path (a token with the ``ping``
scope, or ``heartbeat``, for the deployment or one team) authorises the ping; a POST body
is kept, cut to 10,000 characters, as that ping's log.

Answers are plain text, as Healthchecks': ``OK`` 200, ``not found`` 404 (an unknown key
and an unknown slug look the same), ``rate limited`` 429 with ``Retry-After``, and
``redis unavailable`` 503 with ``Retry-After`` when the ping could not be kept. As in
Healthchecks, ``?create=1`` on an unknown slug registers it (``created`` 201) with
Healthchecks' defaults: a one-day period and an hour's grace. Registering takes the
``heartbeat`` scope: a ``ping`` key (``forbidden`` 403) reports and nothing else.

These routes skip FastAPI's request models (a ping is a path and maybe some text) so that
a ping costs little: one Redis round trip, the key's rate window and the ping itself
pipelined together.
"""

from __future__ import annotations

import logging
import math
import re

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from api import paths
from api.auth import authorize
from api.errors import OUTAGE_RETRY_AFTER, ApiError
from config.api_tokens import ApiToken
from config.catalogue import PING_UUID_PATTERN, SLUG_PATTERN, ServiceSpec
from worker.engine.heartbeats import reports
from worker.engine.heartbeats.registry import DEFAULT_TEAM, Registration, RegistryFullError
from worker.engine.heartbeats.store import HeartbeatInFutureError, Ping, TooManyPings
from worker.engine.runtime import engine
from worker.exceptions import NotificationConfigError

logger = logging.getLogger(__name__)

CORS = {"Access-Control-Allow-Origin": "*"}
#: What ``?create=1`` gives a new service: Healthchecks' period and grace (which also
#: bounds a run after ``/start``).
CREATED_PERIOD = 86_400.0
CREATED_GRACE = 3_600.0
_RID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: An exit status as Healthchecks reads one: ASCII digits (``str.isdigit`` takes ``²``),
#: leading zeros and all (``0255`` is 255), at most 255.
_EXIT_STATUS = re.compile(r"[0-9]{1,100}")


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text, status_code=status, headers={**CORS, **(headers or {})})


def _ping_for(suffix: str | None, rid: str | None, body: str | None) -> Ping | None:
    if suffix is None:
        return Ping(kind="up", rid=rid, body=body)
    if suffix in ("start", "log"):
        return Ping(kind=suffix, via=f"/{suffix}", rid=rid, body=body)  # type: ignore[arg-type]
    if suffix == "fail":
        return Ping(kind="fail", via="/fail", rid=rid, body=body)
    if _EXIT_STATUS.fullmatch(suffix) and int(suffix) <= 255:
        code = int(suffix)
        return Ping(kind="up" if code == 0 else "fail", via=f"exit {code}", rid=rid, body=body)
    return None


def ping(request: Request) -> Response:
    key = request.path_params["key"]
    slug = request.path_params.get("slug")
    suffix = request.path_params.get("suffix")
    rid = request.query_params.get("rid")
    if rid is not None and not _RID.fullmatch(rid):
        return _text(400, "invalid rid")
    if PING_UUID_PATTERN.fullmatch(key):
        # Healthchecks' own URL: /ping/{uuid}[/{suffix}], the UUID its credential. (A key
        # that only looks like a UUID, with a slug after it, is a key.)
        owner = engine().service_by_ping_uuid(key)
        if owner is not None or slug is None:
            if owner is None or suffix is not None:
                engine().heartbeats.refuse("unknown_slug")
                return _text(404, "not found")
            # No key: the UUID is the credential, and the service's own rate window.
            what = _ping_for(slug, rid, _body(request))
            return _kept(owner, what, f"uuid:{owner.slug}", _text(200, "OK"))
    if slug is None:
        return _text(404, "not found")
    try:
        token: ApiToken = authorize(key, "ping", rate=None)  # counted with the ping
    except ApiError:
        return _text(404, "not found")
    what = _ping_for(suffix, rid, _body(request))
    if what is None:  # before ?create=1: a refused call creates nothing
        return _text(400, "invalid url format")
    eng = engine()
    spec = eng.service(slug)
    created = False
    if spec is None and request.query_params.get("create") == "1":
        if not token.allows("heartbeat"):
            return _text(403, "forbidden: creating a check takes the heartbeat scope")
        if not SLUG_PATTERN.fullmatch(slug):
            return _text(400, "invalid slug")
        try:
            spec, created = _create(slug, token)
        except RegistryFullError:
            return _text(400, "too many checks")
    if spec is None or not token.covers(spec.team):
        eng.heartbeats.refuse("unknown_slug")
        return _text(404, "not found")
    return _kept(spec, what, token.name, _text(201, "created") if created else _text(200, "OK"))


def _body(request: Request) -> str | None:
    return (request.state.body or None) if request.method == "POST" else None


def _kept(spec: ServiceSpec, what: Ping | None, rate_key: str, answer: Response) -> Response:
    """``answer`` once ``what`` is kept for ``spec``, counted against ``rate_key``'s window;
    else why not."""
    if what is None:
        return _text(400, "invalid url format")
    try:
        reports.ping(engine(), spec, what, key=rate_key)
    except TooManyPings as exc:
        return _text(429, "rate limited", {"Retry-After": str(max(1, math.ceil(exc.wait)))})
    except HeartbeatInFutureError:
        return _text(400, "invalid time")
    return answer


def _create(slug: str, token: ApiToken) -> tuple[ServiceSpec | None, bool]:
    """Register ``slug`` for ``?create=1``: the service, and whether this call made it."""
    spec = ServiceSpec(
        slug=slug,
        name=slug,
        team=token.team or DEFAULT_TEAM,
        priority="P3",
        window=CREATED_PERIOD,
        grace=CREATED_GRACE,
        # As Healthchecks reads a start signal: a run not finished within the grace time
        # is down (without it, a job hung after /start went unseen for a day).
        max_duration=CREATED_GRACE,
    )
    eng = engine()
    added = eng.registry.add(Registration.new(spec))
    return (spec if added else eng.service(slug)), added


async def endpoint(request: Request) -> Response:
    """The ping, read and answered; the Redis work runs in the thread pool. (The body is
    cut at ``API_MAX_BODY_BYTES``; the log keeps its first ``BODY_LIMIT`` characters.)"""
    if request.method == "POST":
        try:
            request.state.body = (await request.body()).decode("utf-8", "replace")
        except ClientDisconnect:
            # The client left mid-body: nobody to answer, and no fault of ours (uncaught, a
            # 500 with a traceback, and the API-errors alert, for anyone who hangs up).
            return _text(400, "the client left before its body arrived")
    try:
        answer: Response = await run_in_threadpool(ping, request)
    except redis.RedisError as exc:  # NotReplicatedError too: the ping may not be kept
        logger.warning("%s %s: %s", request.method, paths.shown(request), exc)
        return _text(503, "redis unavailable", {"Retry-After": str(OUTAGE_RETRY_AFTER)})
    except NotificationConfigError as exc:
        # The services file cannot be read at all (not TOML, gone before this process
        # first read it): no service is known, but the ping is worth sending again.
        logger.error("%s: %s", paths.shown(request), exc)
        return _text(503, "heartbeat catalogue unavailable", {"Retry-After": "60"})
    return answer


METHODS = ["GET", "HEAD", "POST"]
ROUTES = [
    Route("/ping/{key}", endpoint, methods=METHODS),
    Route("/ping/{key}/{slug}", endpoint, methods=METHODS),
    Route("/ping/{key}/{slug}/{suffix}", endpoint, methods=METHODS),
]
