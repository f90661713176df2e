"""Counting the API's answers, pool-wide: ``gds_notify_http_responses_total{route, code}``.

Every other metric is read from Redis at scrape time, so that any API process answers for
the whole pool; answers are counted the same way. A Redis write per request would cost the
door a round trip on its busiest paths (pings), so each process adds its answers up in
memory and a thread of its own writes them to Redis once a second; the server's shutdown
writes what is left. Answers not written while Redis is down are kept for the next write.

The route is the path's template (``/ping/{key}/{slug}``), never the path: a key or a slug
in a label would put a secret into the metrics and grow the label set without bound. A path
that matches no route is ``other``; Medic's calls under ``/medic/{key}`` count under the
same templates as with a bearer token (``/heartbeat``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections import Counter

import redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.engine import stats
from worker.engine.runtime import engine

logger = logging.getLogger(__name__)

#: The counter's name in Redis and, with the prefix and ``_total``, in the metrics.
NAME = "http_responses"
#: How often each process writes what it counted.
FLUSH_SECONDS = 1.0
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def route_of(scope: Scope) -> str:
    """The template of the route that answered ``scope`` (a parameter's convertor left
    out: ``{dedup_key}``), else ``other``."""
    path = getattr(scope.get("route"), "path", None)
    return _template(path) if isinstance(path, str) and path else "other"


def _template(path: str) -> str:
    return _CONVERTOR.sub(r"{\1}", path)


@functools.cache
def route_templates() -> tuple[str, ...]:
    """Every route's template, as :func:`route_of` names it, and ``other`` (the API's
    routers', read once; ``other`` alone if they cannot be read)."""
    try:
        from api.routes import PING_ROUTES, ROUTERS  # at the scrape: the routes import this

        paths = {"other"}
        routes = [*PING_ROUTES, *(route for router in ROUTERS for route in router.routes)]
        while routes:
            route = routes.pop()
            # A router included in another (Medic's, under /medic/{key} too) answers with
            # its own routes, whose templates leave the prefix out.
            routes += getattr(getattr(route, "original_router", None), "routes", [])
            if path := getattr(route, "path", ""):
                paths.add(_template(path))
        return tuple(sorted(paths))
    except Exception:  # a scrape must not fail for want of zeros
        logger.exception("the API's routes could not be listed: their 500s start unexported")
        return ("other",)


class ResponseCounts:
    """This process's answers not yet written to Redis, and the thread that writes them."""

    def __init__(self, interval: float = FLUSH_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: Counter[tuple[str, str]] = Counter()
        self._pid: int | None = None

    def add(self, route: str, code: int) -> None:
        """Count one answer (the writer starts with this process's first)."""
        with self._lock:
            self._pending[(route, str(code))] += 1
            if self._pid != os.getpid():  # the first answer here, or a forked server process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="response-counts", daemon=True).start()

    def flush(self) -> None:
        """Write what is counted to Redis; kept for the next time when Redis is down."""
        with self._lock:
            taken, self._pending = self._pending, Counter()
        if not taken:
            return
        increments = [stats.count(NAME, route, code, by=n) for (route, code), n in taken.items()]
        try:
            # The quick client: at shutdown, with Redis gone, this must not wait out a
            # failover's retries.
            stats.add(engine().quick_redis, increments)
        except redis.RedisError as exc:
            logger.debug("answers not counted yet (%s): kept for the next write", exc)
            with self._lock:
                self._pending.update(taken)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()


#: The API's counts (one per process).
COUNTS = ResponseCounts()


async def counted(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` (an ASGI app) on an HTTP request, counting its answer by route and
    status code. An answer never started (the client left first) is not counted."""
    status = 0

    async def sending(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, sending)
    finally:
        if status:
            COUNTS.add(route_of(scope), status)
