"""Request heads, bounded: the request line and headers within ``HEAD_MAX_BYTES`` (431
beyond) and within ``API_READ_TIMEOUT`` seconds of the connection opening or the head
starting (408 beyond).

uvicorn's httptools protocol keeps every byte of a head until the head is complete, and
waits for it for ever: one unauthenticated client sending a 100 MB header, or a header
line a second, held the memory (and the event loop, parsing) or a connection without end.
Bodies are bounded by api/body_limits.py, once the head is in; this bounds the head, in
the protocol, where the bytes arrive. ``gds-notify api`` serves with it (``http=``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.settings import get_settings

#: The largest request head taken: a request line and its headers (nginx's default
#: large_client_header_buffers allow 4 × 8 KB; this leaves room for long tokens).
HEAD_MAX_BYTES = 65_536


def _refusal(status: bytes, text: str) -> bytes:
    body = text.encode("ascii")
    return b"".join(
        [
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


TOO_LARGE = _refusal(b"431 Request Header Fields Too Large", "Request head too large.")
TOO_SLOW = _refusal(b"408 Request Timeout", "Request head not received in time.")


class HeadTooLargeError(Exception):
    """Raised from a parser callback to stop parsing a head already refused."""


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a head that is too large or too slow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = get_settings().api_read_timeout
        self.head_open = True
        self.head_bytes = 0  # bytes received while the head is open: a head never finished
        self.head_parsed = 0  # the request line's and headers' bytes, as parsed
        self.head_timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_open:
            self.head_bytes += len(data)
            if self.head_timer is None:
                self._start_head_timer()  # the next request's head on a kept connection
        super().data_received(data)
        # Counted after parsing: a chunk may hold the end of a head and a body with it.
        if self.head_open and self.head_bytes > HEAD_MAX_BYTES:
            self._refuse(TOO_LARGE)

    # A head that arrives in one read is parsed whole before data_received can count it:
    # its parts are counted as the parser hands them over.
    def on_url(self, url: bytes) -> None:
        self._parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _parsed(self, size: int) -> None:
        # After the head, these are a chunked body's trailers: bounded the same, apart.
        self.head_parsed += size
        if self.head_parsed > HEAD_MAX_BYTES:
            self._refuse(TOO_LARGE)
            raise HeadTooLargeError  # httptools stops; uvicorn takes it for a bad request

    def send_400_response(self, msg: str) -> None:
        if not self.refused:  # not after the 431 this sent
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self.head_open = False
        self.head_parsed = 0  # what follows are trailers, with a bound of their own
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_open = True
        self.head_bytes = self.head_parsed = 0

    def _start_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.head_timeout, self._refuse, TOO_SLOW)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _refuse(self, answer: bytes) -> None:
        self._stop_head_timer()
        self.head_open = False
        self.refused = True
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
