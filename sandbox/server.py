"""Running the sandbox: in the foreground for ``gds-notify sandbox``, or on a background
thread (:class:`SandboxServer`) for tests and the dev stack. Both listeners, the web/API
port and the SMTP sink, share one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web

from sandbox.app import EMULATOR, create_app
from sandbox.faults import FaultPlan
from sandbox.pagerduty_emulator import EmulatorOptions, PagerDutyEmulator
from sandbox.smtp_sink import Mailbox, SinkOptions, smtp_factory


class SandboxError(RuntimeError):
    """The sandbox cannot start (for example, its port is taken)."""


#: Who listens where, as the one-line errors name them.
WEB_SERVICE = "PagerDuty emulator"
SMTP_SERVICE = "SMTP sink"


def bind(host: str, port: int, what: str = "--port", service: str = WEB_SERVICE) -> socket.socket:
    """A listening socket on ``host:port`` (0 picks a free port), or a clear error naming
    the ``service`` and the option (``what``) that picks another port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SandboxError(
                f"{service}: port {port} on {host} is already in use; pick another with {what}"
            ) from None
        raise SandboxError(f"{service}: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Listeners:
    """The running web app and SMTP sink; started and stopped on one loop."""

    def __init__(
        self,
        http_sock: socket.socket,
        smtp_sock: socket.socket | None,
        options: EmulatorOptions | None,
        sink: SinkOptions | None,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.mailbox = Mailbox((sink or SinkOptions()).max_messages)
        self.app = create_app(options, self.mailbox)
        self._http_sock = http_sock
        self._smtp_sock = smtp_sock
        self._sink = sink or SinkOptions()
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._smtp_server: asyncio.Server | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._http_sock, ssl_context=self._ssl_context)
        await site.start()
        if self._smtp_sock is not None:
            loop = asyncio.get_running_loop()
            self._smtp_server = await loop.create_server(
                smtp_factory(self.mailbox, self._sink), sock=self._smtp_sock
            )

    async def stop(self) -> None:
        if self._smtp_server is not None:
            self._smtp_server.close()
            self.mailbox.close_connections()
            # Python 3.12+ waits here for every connection to finish; they were just closed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._smtp_server.wait_closed(), 5)
        if self._runner is not None:
            await self._runner.cleanup()


async def serve(
    host: str,
    port: int,
    options: EmulatorOptions | None = None,
    faults: FaultPlan | None = None,
    smtp_port: int | None = None,
    sink: SinkOptions | None = None,
    smtp_faults: FaultPlan | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve until cancelled (Ctrl-C); ``ready`` is called once both ports listen, so
    nothing announces a sandbox that a taken port stops (that raises :class:`SandboxError`)."""
    http_sock = bind(host, port, "--port", WEB_SERVICE)
    try:
        smtp_sock = (
            bind(host, smtp_port, "--smtp-port", SMTP_SERVICE) if smtp_port is not None else None
        )
    except SandboxError:
        http_sock.close()
        raise
    listeners = _Listeners(http_sock, smtp_sock, options, sink, None)
    if faults is not None:
        listeners.app[EMULATOR].faults.set_plan(faults)
    if smtp_faults is not None:
        listeners.mailbox.faults.set_plan(smtp_faults)
    await listeners.start()
    try:
        if ready is not None:
            ready()
        await asyncio.Event().wait()
    finally:
        await listeners.stop()


class SandboxServer:
    """The sandbox on its own thread and event loop, listening on real TCP.

    ``smtp_port=None`` runs no SMTP sink; ``0`` picks a free port.

    >>> with SandboxServer(smtp_port=0) as sandbox:          # doctest: +SKIP
    ...     PagerDutyProvider(key, api_url=sandbox.api_url).trigger(n)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        options: EmulatorOptions | None = None,
        ssl_context: ssl.SSLContext | None = None,
        smtp_port: int | None = None,
        sink: SinkOptions | None = None,
    ) -> None:
        self.host = host
        self._ssl_context = ssl_context
        http_sock = bind(host, port)
        self.port: int = http_sock.getsockname()[1]
        try:
            smtp_sock = (
                bind(host, smtp_port, "--smtp-port", SMTP_SERVICE)
                if smtp_port is not None
                else None
            )
        except SandboxError:
            http_sock.close()
            raise
        self.smtp_port: int | None = smtp_sock.getsockname()[1] if smtp_sock else None
        self._listeners = _Listeners(http_sock, smtp_sock, options, sink, ssl_context)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sandbox", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """What to give ``PagerDutyProvider(api_url=...)`` / ``PAGERDUTY_API_URL``."""
        return f"{self.url}/v2/enqueue"

    @property
    def emulator(self) -> PagerDutyEmulator:
        return self._listeners.app[EMULATOR]

    @property
    def mailbox(self) -> Mailbox:
        return self._listeners.mailbox

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._listeners.start())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._listeners.stop())
        self._loop.close()

    def start(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise SandboxError(f"sandbox failed to start: {self._error}")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
