"""A dead man's switch to point a watchdog at: ``/ping/{check}`` (and ``/ping/{check}/fail``)
record every call, as Healthchecks, Dead Man's Snitch or Cronitor would receive it, and
``GET /sandbox/pings`` shows them (``?check=``). A fault plan is not applied here: to see
what happens when the monitor is down, stop the sandbox."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from aiohttp import web

#: Pings kept, newest last.
KEPT = 1000


class PingSink:
    def __init__(self) -> None:
        self.pings: deque[dict[str, Any]] = deque(maxlen=KEPT)

    async def receive(self, request: web.Request) -> web.Response:
        """One call of a ping URL: remembered; answered ``OK`` as Healthchecks does."""
        check = request.match_info["check"]
        suffix = request.match_info.get("suffix", "")
        body = await request.text() if request.can_read_body else ""
        self.pings.append(
            {
                "at": time.time(),
                "check": check,
                "kind": suffix or "success",
                "method": request.method,
                "body": body[:10_000],
            }
        )
        return web.Response(text="OK")

    async def list(self, request: web.Request) -> web.Response:
        check = request.query.get("check")
        found = [p for p in self.pings if check in (None, p["check"])]
        return web.json_response(found)

    def reset(self) -> None:
        self.pings.clear()

    def routes(self, app: web.Application) -> None:
        for path in ("/ping/{check}", "/ping/{check}/{suffix}"):
            app.router.add_route("GET", path, self.receive)
            app.router.add_route("POST", path, self.receive)
        app.router.add_get("/sandbox/pings", self.list)
