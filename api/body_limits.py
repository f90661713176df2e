"""Request bodies, bounded: at most ``API_MAX_BODY_BYTES`` (413, refused before reading
when ``Content-Length`` says so, else as soon as the count passes it) and delivered within
``API_READ_TIMEOUT`` seconds of the first read (408), so a client that trickles its body
cannot hold a worker thread. A plain ASGI middleware: it wraps ``receive`` and never
buffers.

Ping URLs (``cut=True``) are cut instead, as Healthchecks cuts them: a crontab's
``/fail`` with a long log must still be a failure, and curl does not retry a 413 (nor
gets past a 408 on a slow link). A ping's body that is still arriving at the read timeout
ends there: the ping is recorded with what came."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The setting that bounds a body, named in the 413.
SETTING = "API_MAX_BODY_BYTES"


class BodyLimits:
    """``cut``: pass on only the first ``max_bytes`` of a longer body, as if that were all
    of it (the rest is never read), instead of refusing it. ``by_path``: a path's own
    bound, and the setting that names it, instead of ``max_bytes``, for a request that
    ``admits`` (a caller with a configured token: a larger body is work for the API before
    any route checks who sent it)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        read_timeout: float,
        cut: bool = False,
        by_path: Mapping[str, tuple[int, str]] | None = None,
        admits: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.cut = cut
        self.by_path = dict(by_path or {})
        self.admits = admits

    def _bound(self, scope: Scope) -> tuple[int, str]:
        own = self.by_path.get(scope["path"])
        if own is not None and (self.admits is None or self.admits(scope)):
            return own
        return self.max_bytes, SETTING

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self._bound(scope)
        too_large = f"the body is over {max_bytes} bytes ({setting})"
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        too_long = declared is not None and declared.isdigit() and int(declared) > max_bytes
        if too_long and not self.cut:
            await _refuse(send, 413, too_large)
            return
        received = 0
        deadline: float | None = None
        complete = False
        loop = asyncio.get_running_loop()

        async def limited() -> Message:
            nonlocal received, deadline, complete
            if complete:  # the body is in; what comes now is the client leaving
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.read_timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                if not self.cut:
                    raise HTTPException(
                        408, f"the body did not arrive within {self.read_timeout:g} s"
                    ) from None
                # A ping is its URL: a /fail whose log trickles in over a slow link is a
                # failure with the log that came, not a 408 (curl's --retry repeats it into
                # the same 408, and the failure is never recorded).
                complete = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                room = max(0, max_bytes - received)
                received += len(chunk)
                if received > max_bytes:
                    if not self.cut:
                        raise HTTPException(413, too_large)
                    # The end, for the app: the rest is never waited for (a long log on a
                    # slow link would otherwise run into the read timeout).
                    message = {**message, "body": chunk[:room], "more_body": False}
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers: list[tuple[bytes, Any]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
