"""The SMTP sink: an aiosmtpd server that keeps every message it is sent.

It counts connections (so a test can see a session being reused), offers STARTTLS when
given a certificate and AUTH when given credentials, and takes the same fault plans as the
PagerDuty emulator (:mod:`sandbox.faults`), applied per message at the end of DATA:
``status`` answers that SMTP reply code (421 also closes the connection, as the code
means), ``delay`` answers late, ``drop`` cuts the connection without a reply (with
``accept``, after keeping the message).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from sandbox.faults import FaultInjector

# aiosmtpd warns on every login that its own Session.login_data is deprecated; the sink is
# the server here, so its library's chatter is not the user's concern.
logging.getLogger("mail.log").setLevel(logging.ERROR)

#: Reply texts for injected codes; anything else gets a generic text.
REPLY_TEXTS = {
    421: "Service not available, closing transmission channel (injected)",
    450: "Requested mail action not taken: mailbox unavailable (injected)",
    451: "Requested action aborted: local error in processing (injected)",
    452: "Requested action not taken: insufficient system storage (injected)",
    550: "Requested action not taken: mailbox unavailable (injected)",
    553: "Requested action not taken: mailbox name not allowed (injected)",
    554: "Transaction failed (injected)",
}


@dataclass
class SinkOptions:
    """How the sink behaves. STARTTLS is offered when ``tls_context`` is set; AUTH (PLAIN,
    LOGIN) is required when ``username`` is set."""

    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    require_starttls: bool = False
    max_messages: int = 50_000


class Mailbox:
    """Every message the sink accepted, and how many connections it has seen."""

    def __init__(self, max_messages: int = 50_000) -> None:
        self._lock = threading.Lock()
        self._messages: deque[dict[str, Any]] = deque(maxlen=max_messages)
        self._ids = itertools.count(1)
        self.connections = 0
        #: AUTH attempts seen, each a password sent (over TLS or not: ``clear`` counts those
        #: made on a connection without it).
        self.logins = {"tls": 0, "clear": 0}
        self.faults = FaultInjector()
        self._live: dict[asyncio.BaseTransport, asyncio.AbstractEventLoop] = {}
        #: Recipients the sink refuses at RCPT, with the reply code to refuse them with.
        self.refused_recipients: dict[str, int] = {}

    def connection_opened(self, transport: asyncio.BaseTransport) -> int:
        with self._lock:
            self.connections += 1
            self._live[transport] = asyncio.get_running_loop()
            return self.connections

    def connection_closed(self, transport: asyncio.BaseTransport | None) -> None:
        with self._lock:
            if transport is not None:
                self._live.pop(transport, None)

    def close_connections(self) -> None:
        """Hang up on every client still connected (the sink is stopping, or a test plays
        a server's idle timeout). Safe to call from any thread."""
        with self._lock:
            live, self._live = self._live, {}
        for transport, loop in live.items():
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                transport.close()
            else:
                loop.call_soon_threadsafe(transport.close)

    def add(self, envelope: Envelope, session: Session, connection: int) -> dict[str, Any]:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        # The wire form ends lines in CRLF; show parts as a mail client would.
        parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        entry = {
            "at": time.time(),
            "connection": connection,
            "peer": list(session.peer) if isinstance(session.peer, tuple) else session.peer,
            "tls": session.ssl is not None,
            "authenticated_as": _login(session),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "headers": [[name, str(value)] for name, value in parsed.items()],
            "subject": str(parsed.get("Subject", "")),
            "message_id": str(parsed.get("Message-ID", "")),
            "text": _part(parsed, "plain"),
            "html": _part(parsed, "html"),
            "size": len(raw),
        }
        with self._lock:
            entry["id"] = next(self._ids)
            self._messages.append(entry)
        return entry

    def messages(
        self, to: str | None = None, message_id: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._messages)
        if to is not None:
            items = [m for m in items if to in m["rcpt_tos"]]
        if message_id is not None:
            items = [m for m in items if m["message_id"] == message_id]
        return items

    def login_seen(self, encrypted: bool) -> None:
        with self._lock:
            self.logins["tls" if encrypted else "clear"] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connections": self.connections,
                "messages": len(self._messages),
                "logins": dict(self.logins),
            }

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self.connections = 0
            self.logins = {"tls": 0, "clear": 0}
            self.refused_recipients = {}
        self.faults.clear()


def _login(session: Session) -> str | None:
    return session.auth_data if isinstance(session.auth_data, str) else None


def _part(message: EmailMessage, subtype: str) -> str | None:
    body = message.get_body(preferencelist=(subtype,))
    if body is None:
        return None
    content = body.get_content()
    return content if isinstance(content, str) else None


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        code = self.mailbox.refused_recipients.get(address)
        if code is not None:
            return f"{code} {REPLY_TEXTS.get(code, 'recipient refused')} <{address}>"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        connection = getattr(server, "connection_number", 0)
        fault = self.mailbox.faults.next()
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                if fault.accept:  # the message is kept; only our answer is lost
                    self.mailbox.add(envelope, session, connection)
                if isinstance(server.transport, asyncio.Transport):
                    server.transport.abort()
                return "421 connection dropped (injected)"  # never reaches the client
            if fault.status is not None:
                text = fault.body or REPLY_TEXTS.get(fault.status, "injected failure")
                if fault.status == 421 and server.transport is not None:
                    asyncio.get_running_loop().call_later(0.05, server.transport.close)
                return f"{fault.status} {text}"
        entry = self.mailbox.add(envelope, session, connection)
        return f"250 Message accepted for delivery as {entry['id']}"


class _SinkSMTP(SMTP):
    """aiosmtpd's server, numbering its connections."""

    def __init__(self, mailbox: Mailbox, **kwargs: Any) -> None:
        super().__init__(_Handler(mailbox), **kwargs)
        self._mailbox = mailbox
        self.connection_number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # STARTTLS calls this again on the same connection: count the TCP connection once.
        if self.connection_number == 0:
            self.connection_number = self._mailbox.connection_opened(transport)
            self._tcp_transport = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._mailbox.connection_closed(getattr(self, "_tcp_transport", None))
        super().connection_lost(exc)


def smtp_factory(mailbox: Mailbox, options: SinkOptions) -> Any:
    """A protocol factory for ``loop.create_server``."""

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        mailbox.login_seen(encrypted=session.ssl is not None)
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == options.username
            and auth_data.password.decode() == options.password
        )
        # Keep only the user name: aiosmtpd logs the AuthResult, password and all.
        login = auth_data.login.decode("utf-8", "replace") if ok else None
        return AuthResult(success=ok, handled=False, auth_data=login)

    auth = options.username is not None

    def build() -> _SinkSMTP:
        return _SinkSMTP(
            mailbox,
            hostname="gds-sandbox",
            enable_SMTPUTF8=True,
            tls_context=options.tls_context,
            require_starttls=options.require_starttls,
            authenticator=authenticator if auth else None,
            auth_required=auth,
            auth_require_tls=auth and options.tls_context is not None,
        )

    return build
