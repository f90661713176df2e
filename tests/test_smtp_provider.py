"""SMTPProvider against a real aiosmtpd server (the sandbox's sink) that requires STARTTLS
and AUTH, with certificates from trustme: messages, sessions, every reply class, secrets."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from pydantic import ValidationError

import worker.providers.smtp as smtp_module
from config.settings import load_settings
from sandbox import SandboxServer
from sandbox.smtp_sink import SinkOptions
from tests.conftest import (
    SMTP_PASSWORD,
    SMTP_USER,
    SandboxClient,
    client_tls,
    free_port,
)
from worker.exceptions import (
    NotificationConfigError,
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationError,
    NotificationTimeoutError,
)
from worker.providers import SMTPProvider
from worker.providers.base import Notification, NotificationStatus
from worker.providers.smtp_message import Prepared, prepare


def sandbox_provider(mail_sandbox: SandboxServer, ca: trustme.CA, **options: Any) -> SMTPProvider:
    """A provider for the sandbox's sink (STARTTLS and AUTH), ``options`` on top."""
    assert mail_sandbox.smtp_port is not None
    return logged_in(mail_sandbox.smtp_port, ca, **options)


def logged_in(port: int, ca: trustme.CA, **options: Any) -> SMTPProvider:
    """A provider that logs in over STARTTLS to the server on ``port``, ``options`` on top."""
    settings: dict[str, Any] = {
        "username": SMTP_USER,
        "password": SMTP_PASSWORD,
        "from_addr": "GDS Alerts <alerts@example.com>",
        "starttls": True,
        "timeout": 2,
        "tls_context": client_tls(ca),
    }
    return SMTPProvider("127.0.0.1", port, **(settings | options))


@pytest.fixture
def provider(mail_sandbox: SandboxServer, ca: trustme.CA) -> Iterator[SMTPProvider]:
    smtp = sandbox_provider(mail_sandbox, ca)
    yield smtp
    smtp.close()


def mail(**fields: object) -> Notification:
    values: dict[str, object] = {
        "recipient": "oncall@example.com",
        "subject": "Replica lag on db-2",
        "body": "Lag is 45 s and rising.",
        "idempotency_id": "job-42",
    }
    values.update(fields)
    return Notification.model_validate(values)


def headers(message: dict[str, object]) -> dict[str, str]:
    pairs = message["headers"]
    assert isinstance(pairs, list)
    return {name: value for name, value in pairs}


# -- messages -------------------------------------------------------------------------


def test_plain_message_arrives_intact_with_the_right_headers(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    result = provider.send(mail())
    assert result.is_success()
    assert result.status is NotificationStatus.SENT
    assert result.provider == "smtp"
    [message] = mail_api.messages()
    assert message["text"] == "Lag is 45 s and rising.\n"
    assert message["html"] is None
    assert message["tls"] is True
    assert message["authenticated_as"] == SMTP_USER
    assert message["mail_from"] == "alerts@example.com"
    assert message["rcpt_tos"] == ["oncall@example.com"]
    h = headers(message)
    assert h["From"] == "GDS Alerts <alerts@example.com>"
    assert h["To"] == "oncall@example.com"
    assert h["Subject"] == "Replica lag on db-2"
    assert h["Message-ID"] == result.message_id
    assert h["Message-ID"].endswith("@example.com>")
    assert email.utils.parsedate_to_datetime(h["Date"]).utcoffset() is not None
    assert h["X-GDS-Idempotency-Id"] == "job-42"
    assert "Importance" not in h
    assert "X-Priority" not in h


def test_html_alternative_arrives_beside_the_text(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    provider.send(mail(body_html="<p>Lag is <b>45 s</b></p>"))
    [message] = mail_api.messages()
    assert message["text"] == "Lag is 45 s and rising.\n"
    assert message["html"] == "<p>Lag is <b>45 s</b></p>\n"
    assert headers(message)["Content-Type"].startswith("multipart/alternative")


@pytest.mark.parametrize(
    ("priority", "importance", "x_priority"),
    [
        ("low", None, None),
        ("normal", None, None),
        ("high", "high", "2 (High)"),
        ("critical", "high", "1 (Highest)"),
        ("emergency", "high", "1 (Highest)"),
    ],
)
def test_importance_headers_for_high_and_above(
    provider: SMTPProvider,
    mail_api: SandboxClient,
    priority: str,
    importance: str | None,
    x_priority: str | None,
) -> None:
    provider.send(mail(priority=priority))
    h = headers(mail_api.messages()[0])
    assert h.get("Importance") == importance
    assert h.get("X-Priority") == x_priority
    assert h["X-GDS-Priority"] == priority


def test_non_ascii_subject_body_and_names_round_trip(
    provider: SMTPProvider, mail_api: SandboxClient, mail_sandbox: SandboxServer
) -> None:
    subject = "Réplica retardée — 数据库 ✓ 🚨"
    body = "Ça dépasse 45 s. Проверьте репликацию. 🚨"
    provider.send(
        mail(
            subject=subject,
            body=body,
            body_html=f"<p>{body}</p>",
            recipient="Jürgen Müller <juergen@example.com>",
        )
    )
    [message] = mail_api.messages()
    assert message["subject"] == subject
    assert message["text"] == body + "\n"
    assert message["html"] == f"<p>{body}</p>\n"
    assert headers(message)["To"] == "Jürgen Müller <juergen@example.com>"
    raw = mail_sandbox.mailbox.messages()[0]
    assert raw["size"] > 0


def test_several_recipients(provider: SMTPProvider, mail_api: SandboxClient) -> None:
    result = provider.send(mail(recipient='a@example.com, "Doe, Jane" <jane@example.org>'))
    assert result.metadata["accepted"] == ["a@example.com", "jane@example.org"]
    [message] = mail_api.messages()
    assert message["rcpt_tos"] == ["a@example.com", "jane@example.org"]
    assert headers(message)["To"] == 'a@example.com, "Doe, Jane" <jane@example.org>'


def test_message_id_is_derived_from_the_idempotency_id(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    first = provider.send(mail())
    resend = provider.send(mail(body="edited body, same job"))
    other = provider.send(mail(idempotency_id="job-43"))
    assert first.message_id == resend.message_id
    assert other.message_id != first.message_id
    anonymous = provider.send(mail(idempotency_id=None))
    assert anonymous.message_id == provider.send(mail(idempotency_id=None)).message_id
    assert len({m["message_id"] for m in mail_api.messages()}) == 3


def test_plain_text_goes_out_8bit_to_a_server_that_offers_8bitmime(
    provider: SMTPProvider, mail_api: SandboxClient, mail_sandbox: SandboxServer
) -> None:
    body = "Ça dépasse 45 s. Проверьте репликацию. 🚨"
    provider.send(mail(body=body, subject="Réplica retardée 🚨"))
    [message] = mail_api.messages()
    assert message["text"] == body + "\n"
    assert message["subject"] == "Réplica retardée 🚨"
    assert headers(message)["Content-Transfer-Encoding"] == "8bit"


class Recorder:
    """An aiosmtpd handler that offers what aiosmtpd offers (8BITMIME among it) and keeps
    each message's MAIL options and bytes as they arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.received.append((list(envelope.mail_options), envelope.original_content))
        return "250 2.0.0 accepted"


class OldServer(Recorder):
    """A server without 8BITMIME (``helo_only``: one that answers EHLO with 502, as a
    server that knows only HELO does); it keeps what it was sent."""

    def __init__(self, helo_only: bool = False) -> None:
        super().__init__()
        self.helo_only = helo_only

    async def handle_EHLO(
        self, server: object, session: Any, envelope: object, hostname: str, responses: list[str]
    ) -> list[str]:
        if self.helo_only:
            return ["502 5.5.1 EHLO not implemented"]
        session.host_name = hostname
        return [r for r in responses if "8BITMIME" not in r]


class RefusesReset(Recorder):
    """A server that refuses the first message (554) and then the RSET after it (451), as
    a relay whose transaction state is out of order does; it counts its sessions."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions = 0
        self.refused = False

    async def handle_EHLO(
        self, server: object, session: Any, envelope: object, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        if not self.refused:
            self.refused = True
            return "554 5.7.1 refused"
        return await super().handle_DATA(server, session, envelope)

    async def handle_RSET(self, server: object, session: object, envelope: object) -> str:
        return "451 4.3.0 cannot reset now"


class Tarpit(Recorder):
    """A server that answers every RCPT, slowly: each reply within the timeout, the whole
    past any bound on a reply."""

    async def handle_RCPT(
        self, server: object, session: object, envelope: Any, address: str, options: list[str]
    ) -> str:
        await asyncio.sleep(0.3)
        envelope.rcpt_tos.append(address)
        return "250 OK"


class OddSuccess(Recorder):
    """A server that takes the message and answers 252, not 250."""

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        await super().handle_DATA(server, session, envelope)
        return "252 2.0.0 taken, oddly"


def test_a_success_code_other_than_250_to_the_message_is_delivered_once() -> None:
    """A 2xx where aiosmtplib wanted 250, after the message went: the server took it (RFC
    5321 4.2.5), and reporting a failure had it dead-lettered, then replayed as a second
    copy. The session stays in step and is kept."""
    handler = OddSuccess()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    provider = SMTPProvider("127.0.0.1", controller.port, starttls=False, timeout=5)
    try:
        result = provider.send(mail())
        assert result.status is NotificationStatus.SENT
        assert result.metadata["server_reply"] == "2.0.0 taken, oddly"
        assert provider.send(mail(idempotency_id="next")).is_success()
    finally:
        provider.close()
        controller.stop()
    assert len(handler.received) == 2
    assert provider.sessions_opened == 1


#: What a scripted server answers unless told otherwise ("250 OK" to the rest).
SCRIPTED_DEFAULTS = {
    "EHLO": "250-scripted\r\n250 8BITMIME",
    "DATA": "354 go ahead",
    "QUIT": "221 bye",
}


class Scripted:
    """A scripted SMTP server on its own thread, for replies aiosmtpd will not give (a
    greeting other than 220, an answer to DATA other than 354): ``greeting`` opens each
    session, ``replies`` answers a command by its verb ("." is the message's end; a list
    is used up one per command, its last kept; ``DROP`` hangs up). ``log`` keeps every
    command, and ``<message>`` where a message arrived."""

    def __init__(self, greeting: str = "220 scripted ESMTP", **replies: str | list[str]) -> None:
        self.greeting = greeting
        self.replies = {verb.replace("_", "."): r for verb, r in replies.items()}
        self.log: list[str] = []
        self.sessions = 0
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def reply(self, verb: str) -> str:
        given = self.replies.get(verb)
        if isinstance(given, list):
            return given.pop(0) if len(given) > 1 else given[0]
        return given or SCRIPTED_DEFAULTS.get(verb, "250 OK")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        writer.write(self.greeting.encode() + b"\r\n")
        in_message = False
        while line := await reader.readline():
            if in_message:
                if line != b".\r\n":
                    continue
                in_message, verb = False, "."
                self.log.append("<message>")
            else:
                self.log.append(line.decode().strip())
                verb = self.log[-1].split(" ")[0].upper()
            answer = self.reply(verb)
            if answer == "DROP":
                break
            writer.write(answer.encode() + b"\r\n")
            await writer.drain()
            in_message = verb == "DATA" and answer.startswith("354")
            if verb == "QUIT" or answer.startswith("421"):
                break
        writer.close()

    def _run(self) -> None:
        server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port)
        )
        self.started.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def __enter__(self) -> Scripted:
        self.thread.start()
        self.started.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def scripted_send(server: Scripted, *notes: Notification, **options: Any) -> NotificationError:
    """Send ``notes`` in turn on one provider to ``server``; the error the last raised."""
    provider = SMTPProvider(
        "127.0.0.1", server.port, **({"starttls": False, "timeout": 2} | options)
    )
    try:
        for note in notes[:-1]:
            assert provider.send(note).is_success()
        with pytest.raises(NotificationError) as caught:
            provider.send(notes[-1])
    finally:
        provider.close()
    return caught.value


@pytest.mark.parametrize("reply", ["250 2.0.0 OK", "251 2.1.5 will forward", "334 VXNlcm5hbWU6"])
def test_a_success_reply_to_data_in_place_of_354_is_retried_as_nothing_was_sent(
    reply: str,
) -> None:
    """DATA answered 2xx or 3xx other than 354 (a server a reply behind, say): the message
    never went, yet it was dead-lettered as one the server "may have taken"."""
    with Scripted(DATA=reply) as server:
        error = scripted_send(server, mail())
    assert "<message>" not in server.log
    assert server.log[-1] == "RSET"  # aiosmtplib's; no QUIT: out of step, the session is dropped
    assert isinstance(error, NotificationDeliveryError)
    assert error.retryable
    assert error.status_code == int(reply[:3])
    assert f"answered {reply}, out of step" in str(error)


def test_a_reused_session_lost_before_the_server_answered_data_is_replaced_once() -> None:
    """Dropped after DATA but before its 354: the message never went, so it goes once more
    on a fresh session, as for a session lost before DATA."""
    with Scripted(DATA=["354 go ahead", "DROP", "354 go ahead"]) as server:
        provider = SMTPProvider("127.0.0.1", server.port, starttls=False, timeout=2)
        try:
            assert provider.send(mail(idempotency_id="first")).is_success()
            assert provider.send(mail(idempotency_id="second")).is_success()
        finally:
            provider.close()
    assert server.log.count("<message>") == 2
    assert server.sessions == 2


@pytest.mark.parametrize(
    ("greeting", "retryable"),
    [
        # RFC 5321 3.1: the server refuses the whole session, for good. A relay refusing
        # only for a while says 421 (3.8), retried below; this one is dead-lettered.
        ("554 5.7.1 no SMTP service here for 192.0.2.7", False),
        ("421 4.3.2 too busy, come back later", True),
    ],
    ids=["554", "421"],
)
def test_a_greeting_refusal_is_reported_in_the_servers_words(
    greeting: str, retryable: bool
) -> None:
    """A 554 greeting was a connection error, retried for an hour, its text shown as a
    Python tuple."""
    with Scripted(greeting) as server:
        error = scripted_send(server, mail())
    assert server.log == []
    assert type(error) is NotificationDeliveryError
    assert error.retryable is retryable
    assert error.status_code == int(greeting[:3])
    assert error.errors == [greeting]
    assert str(error).endswith(f"refused the session in its greeting: {greeting}")


@pytest.mark.parametrize(
    ("replies", "retryable", "says"),
    [
        (
            {"EHLO": "550 5.7.1 EHLO from you refused", "HELO": "550 5.7.1 HELO refused too"},
            False,
            "refused EHLO (550 5.7.1 EHLO from you refused) and then HELO: "
            "550 5.7.1 HELO refused too",
        ),
        ({"EHLO": "421 4.3.2 shutting down"}, True, "refused EHLO: 421 4.3.2 shutting down"),
    ],
    ids=["EHLO and HELO 550", "EHLO 421"],
)
def test_a_refused_ehlo_is_named_with_the_servers_words(
    replies: dict[str, str], retryable: bool, says: str
) -> None:
    """The operator read "answered 550 5.7.1 HELO refused too": neither EHLO named nor
    what the server said to it."""
    with Scripted(**replies) as server:
        error = scripted_send(server, mail())
    assert isinstance(error, NotificationDeliveryError)
    assert error.retryable is retryable
    assert str(error).endswith(says)
    assert error.errors[-1] == replies.get("HELO", replies["EHLO"])


def test_a_server_that_refused_ehlo_is_named_when_starttls_is_then_missing() -> None:
    """EHLO refused, HELO taken: a server greeted with HELO offers nothing, STARTTLS
    included, and "does not offer STARTTLS" alone hid why."""
    with Scripted(EHLO="550 5.7.1 EHLO from you refused") as server:
        error = scripted_send(server, mail(), starttls=True)
    assert "does not offer STARTTLS (it refused EHLO: 550 5.7.1 EHLO from you refused)" in str(
        error
    )


def test_one_attempt_is_bounded_in_all_within_the_deliverys_claim() -> None:
    """Twelve recipients at 0.3 s each, every reply well within a 0.5 s timeout: the attempt
    ends at 4 × 0.5 + 0.5 s, inside the claim a delivery holds (that plus 5 s), so no other
    worker takes the job up while this one is still sending it."""
    from config.settings import load_settings
    from worker.channels import Channel
    from worker.engine.delivery import claim_seconds
    from worker.providers.smtp import attempt_seconds

    handler = Tarpit()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    provider = SMTPProvider("127.0.0.1", controller.port, starttls=False, timeout=0.5)
    many = ", ".join(f"u{i}@example.com" for i in range(12))
    try:
        with pytest.raises(NotificationTimeoutError) as caught:
            provider.send(mail(recipient=many))
    finally:
        provider.close()
        controller.stop()
    assert provider.attempt_seconds == 2.5
    assert "took more than 2.5s in all for one message" in str(caught.value)
    assert caught.value.retryable
    assert handler.received == []
    # The provider the settings make is bounded 5 s inside the claim a delivery holds.
    settings = load_settings()
    holder: Any = SimpleNamespace(settings=settings)
    bound = SMTPProvider.from_settings(settings).attempt_seconds
    assert bound == attempt_seconds(settings.smtp_timeout, settings.smtp_data_wait)
    assert claim_seconds(holder, Channel.EMAIL) == bound + 5


@pytest.mark.parametrize("helo_only", [False, True], ids=["EHLO without 8BITMIME", "HELO only"])
def test_a_server_without_8bitmime_gets_every_body_in_7bit(
    helo_only: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[Prepared] = []

    def recorded(
        notification: Notification, from_addr: str, at: datetime | None, job_id: str | None
    ) -> Prepared:
        # Prepared an hour ago: a Date taken afresh for the rebuilt message would differ.
        then = datetime.now(UTC) - timedelta(hours=1)
        prepared.append(prepare(notification, from_addr, at or then, job_id))
        return prepared[-1]

    monkeypatch.setattr(smtp_module, "prepare", recorded)
    handler = OldServer(helo_only)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    provider = SMTPProvider("127.0.0.1", controller.port, starttls=False, timeout=5)
    try:
        body = "Ça dépasse 45 s. Проверьте репликацию."
        provider.send(mail(body=body, idempotency_id=None), "job-1")
        provider.send(mail(body="Lag is 45 s and rising."))
    finally:
        provider.close()
        controller.stop()
    assert len(handler.received) == 2
    texts = []
    for (options, raw), written in zip(handler.received, prepared, strict=True):
        assert not [o for o in options if o.upper().startswith("BODY=")], options
        assert raw.isascii(), raw  # nothing 8-bit to a server that did not offer 8BITMIME
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        # Built again for this server, it is still the message prepared: same Date and id.
        assert parsed["Date"].datetime == written.date.replace(microsecond=0)
        assert parsed["Message-ID"] == written.message_id
        assert parsed["X-GDS-Job-Id"] == written.job_id
        assert parsed["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")
        texts.append(parsed.get_content().replace("\r\n", "\n"))
    assert texts == [body + "\n", "Lag is 45 s and rising.\n"]


def _without_date(raw: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: [^\r\n]*\r\n", b"", raw)


def test_plain_alert_mail_goes_out_as_the_bytes_prepare_wrote_from_the_first_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The standard library's way is not there to fall back on: every message below,
    # the first on a fresh session included (greeted before the way is chosen), must go
    # out as prepare()'s bytes.
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("sent through the standard library's message")

    monkeypatch.setattr(aiosmtplib.SMTP, "send_message", refused)
    monkeypatch.setattr(smtp_module, "build_message", refused)
    handler = Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    provider = SMTPProvider(
        "127.0.0.1", controller.port, from_addr="alerts@example.com", starttls=False, timeout=5
    )
    sent = [mail(body="Ça dépasse 45 s. Проверьте репликацию."), mail(body="Lag is 45 s.")]
    try:
        results = [provider.send(n) for n in sent]
    finally:
        provider.close()
        controller.stop()
    assert [r.status for r in results] == [NotificationStatus.SENT] * 2
    assert len(handler.received) == 2
    for n, (options, raw) in zip(sent, handler.received, strict=True):
        written = prepare(n, "alerts@example.com")
        assert written.data is not None
        assert _without_date(raw) == _without_date(written.data)
        assert "BODY=8BITMIME" in options


# -- refused before any I/O -------------------------------------------------------------


@pytest.mark.parametrize("field", ["subject", "recipient", "alert_name", "idempotency_id"])
def test_header_injection_is_refused_by_the_model_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        mail(**{field: "ok@example.com\r\nBcc: victim@example.org"})
    [error] = caught.value.errors()
    assert error["loc"] == (field,)
    assert "no CR or LF" in error["msg"]


@pytest.mark.parametrize("field", ["subject", "recipient", "alert_name", "idempotency_id"])
def test_header_injection_is_refused_by_the_builder_too_without_a_connection(
    provider: SMTPProvider, mail_api: SandboxClient, field: str
) -> None:
    # model_construct skips validation, as a caller bypassing the model would.
    values = mail().model_dump() | {field: "x@example.com\nBcc: victim@example.org"}
    with pytest.raises(NotificationDeliveryError, match=f"^{field}: must not contain CR or LF"):
        provider.send(Notification.model_construct(**values))
    assert provider.sessions_opened == 0
    assert mail_api.smtp_stats()["connections"] == 0


@pytest.mark.parametrize(
    "recipient",
    ["not-an-address", "a@b@example.com", "user@", "@example.com", "x@-bad-.com", " , "],
)
def test_bad_addresses_are_refused_without_a_connection(
    provider: SMTPProvider, mail_api: SandboxClient, recipient: str
) -> None:
    with pytest.raises(NotificationDeliveryError, match=r"^recipient: ") as caught:
        provider.send(mail(recipient=recipient))
    assert not caught.value.retryable
    assert provider.sessions_opened == 0
    assert mail_api.smtp_stats()["connections"] == 0


def test_bad_sender_is_a_config_error() -> None:
    with pytest.raises(NotificationConfigError, match="from_addr"):
        SMTPProvider("localhost", 25, from_addr="nobody")


# -- sessions ---------------------------------------------------------------------------


def test_one_session_for_many_messages(provider: SMTPProvider, mail_api: SandboxClient) -> None:
    for i in range(15):
        assert provider.send(mail(idempotency_id=f"job-{i}")).is_success()
    results = provider.send_bulk([mail(idempotency_id=f"bulk-{i}") for i in range(10)])
    assert all(r.is_success() for r in results)
    assert mail_api.smtp_stats() == {
        "connections": 1,
        "messages": 25,
        "logins": {"tls": 1, "clear": 0},
    }
    assert provider.sessions_opened == 1
    assert {m["connection"] for m in mail_api.messages()} == {1}


def test_session_is_reopened_after_the_server_drops_it(
    provider: SMTPProvider, mail_api: SandboxClient, mail_sandbox: SandboxServer
) -> None:
    provider.send(mail(idempotency_id="before"))
    mail_sandbox.mailbox.close_connections()  # the server hangs up, as on an idle timeout
    time.sleep(0.1)
    assert provider.send(mail(idempotency_id="after")).is_success()
    assert provider.sessions_opened == 2
    assert [m["connection"] for m in mail_api.messages()] == [1, 2]


def test_a_session_the_server_answered_421_on_is_not_used_again(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    # 421 says the server is closing the channel. The next message goes at once, before the
    # hang-up lands: on the old session it could reach the server and lose its answer to
    # the hang-up, and a resend would then make it two.
    mail_api.smtp_faults({"status": 421})
    with pytest.raises(NotificationDeliveryError) as caught:
        provider.send(mail(idempotency_id="refused"))
    assert caught.value.retryable
    assert provider._smtp is None  # given up at once, not left to race the hang-up
    assert provider.send(mail(idempotency_id="next")).is_success()
    assert provider.sessions_opened == 2
    assert [m["connection"] for m in mail_api.messages()] == [2]


def test_a_send_cancelled_mid_transaction_leaves_no_session_out_of_step(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    """A caller's timeout cancels asend while the server still owes its answer to the
    message; reused, the session paired that late 250 with the next MAIL, and the next
    message was dead-lettered as refused ("answered 250")."""
    mail_api.smtp_faults({"delay": 1.5})

    async def two() -> Any:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(provider.asend(mail(idempotency_id="slow")), 0.5)
        return await provider.asend(mail(idempotency_id="next"))

    result = asyncio.run(two())
    assert result.status == NotificationStatus.SENT
    [sent] = mail_api.messages(message_id=result.message_id or "")
    assert sent["connection"] == 2  # a fresh session


def test_a_reused_session_lost_during_data_is_not_sent_again(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    provider.send(mail(idempotency_id="first"))
    # The server takes the message, then the connection drops before its answer arrives.
    mail_api.smtp_faults({"drop": True, "accept": True})
    taken = mail(idempotency_id="taken")
    with pytest.raises(NotificationConnectionError) as caught:
        provider.send(taken)
    assert caught.value.retryable  # at least once: the job's retry may make it two
    assert "during DATA, so it may have taken the message" in str(caught.value)
    message_id = provider.send(taken).message_id  # what that retry does
    assert message_id is not None
    copies = mail_api.messages(message_id=message_id)
    assert [m["connection"] for m in copies] == [1, 2]  # not a third from a resend
    assert provider.sessions_opened == 2


class SilentAfterRefusing(Recorder):
    """A server that answers ``reply`` at the end of DATA, then neither answers what comes
    next (RSET) nor hangs up."""

    def __init__(self, reply: str) -> None:
        super().__init__()
        self.reply = reply
        self.resets = 0

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        return self.reply

    async def handle_RSET(self, server: object, session: object, envelope: object) -> str:
        self.resets += 1
        await asyncio.sleep(60)  # the controller's stop cancels it
        return "250 OK"


@pytest.mark.parametrize(
    ("reply", "retryable", "resets"),
    [
        # 421 says the server is closing the channel: no RSET is sent on it.
        ("421 4.3.2 Service shutting down", True, 0),
        # Any other refusal gets aiosmtplib's RSET, which waits out the timeout here.
        ("451 4.3.0 Local error in processing", True, 1),
        ("554 5.7.1 Message rejected", False, 1),
    ],
)
def test_a_refusal_at_the_end_of_data_is_reported_as_itself_whatever_comes_after(
    reply: str, retryable: bool, resets: int
) -> None:
    handler = SilentAfterRefusing(reply)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    provider = SMTPProvider("127.0.0.1", controller.port, starttls=False, timeout=2)
    try:
        with pytest.raises(NotificationDeliveryError) as caught:
            provider.send(mail())
        assert provider._smtp is None or not provider._smtp.is_connected
    finally:
        provider.close()
        controller.stop()
    assert type(caught.value) is NotificationDeliveryError  # not a timeout on RSET
    assert caught.value.status_code == int(reply[:3])
    assert caught.value.retryable is retryable
    assert "may have taken" not in str(caught.value)  # the server said it did not
    assert handler.resets == resets


@pytest.mark.parametrize(
    ("recipient", "error", "says"),
    [
        # 421 at the only RCPT: every recipient refused, the server closing.
        ("busy@example.com", NotificationDeliveryError, "busy@example.com: 421"),
        # The first recipient taken, the second answered 421: aiosmtplib hangs up, and DATA
        # finds no connection, which is not a loss during DATA.
        ("oncall@example.com, busy@example.com", NotificationConnectionError, "closed the"),
    ],
)
def test_a_reused_session_the_server_hung_up_on_before_data_is_replaced_once(
    provider: SMTPProvider,
    mail_api: SandboxClient,
    recipient: str,
    error: type[NotificationError],
    says: str,
) -> None:
    provider.send(mail(idempotency_id="first"))
    refuse = {"recipients": {"busy@example.com": 421}}
    assert mail_api.http.post("/sandbox/smtp/refuse", json=refuse).status_code == 200
    with pytest.raises(error, match=says) as caught:
        provider.send(mail(recipient=recipient))
    assert caught.value.retryable
    assert "may have taken" not in str(caught.value)  # nothing went out
    assert provider.sessions_opened == 2  # the fresh one, once
    assert mail_api.smtp_stats()["connections"] == 2
    assert len(mail_api.messages()) == 1


def test_idle_session_is_checked_with_noop_and_replaced(
    provider: SMTPProvider,
    mail_api: SandboxClient,
    mail_sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(smtp_module, "IDLE_CHECK_SECONDS", 0.0)
    provider.send(mail(idempotency_id="before"))
    mail_sandbox.mailbox.close_connections()
    time.sleep(0.1)
    assert provider.send(mail(idempotency_id="after")).is_success()
    assert mail_api.smtp_stats() == {
        "connections": 2,
        "messages": 2,
        "logins": {"tls": 2, "clear": 0},
    }


def test_async_use_on_another_loop_then_sync_again(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    async def two() -> None:
        await provider.asend(mail(idempotency_id="async-1"))
        await provider.asend(mail(idempotency_id="async-2"))

    asyncio.run(two())
    provider.send(mail(idempotency_id="sync"))
    assert len(mail_api.messages()) == 3
    assert provider.sessions_opened == 2  # one per loop, reused within each


def test_context_manager_quits_the_session(
    mail_sandbox: SandboxServer, ca: trustme.CA, mail_api: SandboxClient
) -> None:
    assert mail_sandbox.smtp_port is not None
    with SMTPProvider(
        "127.0.0.1",
        mail_sandbox.smtp_port,
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        from_addr="alerts@example.com",
        tls_context=client_tls(ca),
    ) as smtp:
        smtp.send(mail())
        session = smtp._smtp
        assert session is not None
    assert not session.is_connected
    assert smtp._smtp is None


# -- every reply class -------------------------------------------------------------------


@pytest.mark.parametrize("code", [421, 450, 451, 452])
def test_transient_replies_are_retryable(
    provider: SMTPProvider, mail_api: SandboxClient, code: int
) -> None:
    mail_api.smtp_faults({"status": code})
    with pytest.raises(NotificationDeliveryError) as caught:
        provider.send(mail())
    error = caught.value
    assert error.retryable
    assert error.status_code == code
    assert str(code) in error.errors[0]
    assert provider.send(mail()).is_success()  # and the next one goes through


@pytest.mark.parametrize("code", [550, 553, 554])
def test_permanent_replies_are_final_with_the_code_and_text(
    provider: SMTPProvider, mail_api: SandboxClient, code: int
) -> None:
    mail_api.smtp_faults({"status": code, "body": "5.1.1 no such mailbox here"})
    with pytest.raises(NotificationDeliveryError) as caught:
        provider.send(mail())
    error = caught.value
    assert not error.retryable
    assert error.status_code == code
    assert error.errors == [f"{code} 5.1.1 no such mailbox here"]
    assert f"{code} 5.1.1 no such mailbox here" in str(error)


def test_dropped_connection_is_retryable(provider: SMTPProvider, mail_api: SandboxClient) -> None:
    mail_api.smtp_faults({"drop": True})
    with pytest.raises(NotificationConnectionError) as caught:
        provider.send(mail())
    assert caught.value.retryable
    assert provider.send(mail()).is_success()
    assert len(mail_api.messages()) == 1


def test_slow_server_is_a_timeout(provider: SMTPProvider, mail_api: SandboxClient) -> None:
    mail_api.smtp_faults({"delay": 3})
    with pytest.raises(NotificationTimeoutError) as caught:
        provider.send(mail())
    assert caught.value.timeout_seconds == 2
    assert caught.value.retryable
    # The answer to the message was late: whether it was taken is unknown, and said.
    assert str(caught.value).endswith("within 2s during DATA, so it may have taken the message")


def test_the_answer_to_a_message_has_its_own_longer_timeout(
    mail_sandbox: SandboxServer, ca: trustme.CA, mail_api: SandboxClient
) -> None:
    """RFC 5321 gives a server minutes to answer a message (it is delivering it): an
    answer later than the other replies' timeout is waited for, not taken for a loss and
    sent again; one later than ``data_timeout`` is a timeout that names it."""
    patient = sandbox_provider(mail_sandbox, ca, timeout=1, data_timeout=4)
    try:
        mail_api.smtp_faults({"delay": 2})
        assert patient.send(mail(idempotency_id="slow")).is_success()
        assert len(mail_api.messages()) == 1
        mail_api.smtp_faults({"delay": 6})
        with pytest.raises(NotificationTimeoutError) as caught:
            patient.send(mail(idempotency_id="slower"))
    finally:
        patient.close()
    assert caught.value.timeout_seconds == 4
    assert str(caught.value).endswith("within 4s during DATA, so it may have taken the message")


def test_refused_connection() -> None:
    smtp = SMTPProvider("127.0.0.1", free_port(), from_addr="a@example.com", timeout=2)
    with pytest.raises(NotificationConnectionError, match="cannot connect") as caught:
        smtp.send(mail())
    assert caught.value.retryable
    assert smtp.health_check() is False
    smtp.close()


def test_some_recipients_refused_is_reported_not_hidden(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    mail_api.http.post(
        "/sandbox/smtp/refuse", json={"recipients": {"gone@example.com": 550}}
    ).raise_for_status()
    result = provider.send(mail(recipient="a@example.com, gone@example.com, b@example.com"))
    assert result.is_success()
    assert result.metadata["accepted"] == ["a@example.com", "b@example.com"]
    refused = result.metadata["refused"]
    assert isinstance(refused, dict)
    assert list(refused) == ["gone@example.com"]
    assert str(refused["gone@example.com"]).startswith("550")
    assert result.error_message is not None
    assert "1 of 3 recipients refused: gone@example.com (550" in result.error_message
    assert not result.is_retriable()
    assert mail_api.messages()[0]["rcpt_tos"] == ["a@example.com", "b@example.com"]


def test_transiently_refused_recipient_makes_the_result_retriable(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    mail_api.http.post("/sandbox/smtp/refuse", json={"recipients": {"full@example.com": 452}})
    result = provider.send(mail(recipient="a@example.com, full@example.com"))
    assert result.is_success()
    assert result.retryable


def test_a_message_is_dated_when_its_job_was_accepted_whatever_the_attempt(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    """A retry an hour into an outage is the same message as the first attempt: same
    Message-ID, same Date (the delivery step passes its job's acceptance time)."""
    accepted = datetime(2026, 12, 7, 9, 30, 5, tzinfo=UTC)
    provider.send(mail(idempotency_id="dated"), "job-7", at=accepted)
    provider.send(mail(idempotency_id="dated"), "job-7", at=accepted)  # the retry
    first, retry = mail_api.messages()
    assert dict(first["headers"])["Date"] == dict(retry["headers"])["Date"]
    assert dict(first["headers"])["Date"] == "Mon, 07 Dec 2026 09:30:05 +0000"
    assert first["message_id"] == retry["message_id"]


class Greylisting(Recorder):
    """A server that greylists the first attempt, with a 451 to RCPT or to the message,
    and takes the next; it keeps the Message-ID of every message it was sent."""

    def __init__(self, at: str) -> None:
        super().__init__()
        self.at = at
        self.attempts = 0
        self.message_ids: list[str] = []

    async def handle_RCPT(
        self, server: object, session: object, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.attempts += 1
        if self.at == "RCPT" and self.attempts == 1:
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.message_ids.append(str(parsed["Message-ID"]))
        if self.at == "DATA" and len(self.message_ids) == 1:
            return "451 4.7.1 Greylisted, try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("at", ["RCPT", "DATA"])
def test_a_greylisted_message_keeps_its_jobs_message_id_when_sent_again(at: str) -> None:
    """Each attempt builds the message anew; its Message-ID comes from the job's id and the
    sender's domain, so the retry after a greylisting 451 is the same message to the
    receiver, and another job's is not."""
    handler = Greylisting(at)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    provider = SMTPProvider(
        "127.0.0.1", controller.port, from_addr="alerts@example.com", starttls=False, timeout=5
    )
    unkeyed = mail(idempotency_id=None)
    try:
        with pytest.raises(NotificationDeliveryError, match=r"451 4\.7\.1 Greylisted") as caught:
            provider.send(unkeyed, "job-9")
        assert caught.value.retryable
        retry = provider.send(unkeyed, "job-9")
        other = provider.send(unkeyed, "job-10")
    finally:
        provider.close()
        controller.stop()
    digest = hashlib.sha256(b"job:job-9").hexdigest()[:32]
    assert retry.message_id == f"<gds.{digest}@example.com>"
    job_9 = 2 if at == "DATA" else 1  # a 451 to RCPT comes before the message is sent
    assert handler.message_ids == [retry.message_id] * job_9 + [other.message_id]
    assert other.message_id != retry.message_id


def test_an_address_named_twice_gets_the_message_once(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    """A routing rule's list and the producer's recipient overlapping, or one address
    typed twice: two RCPTs delivered it twice, under a To that named it twice."""
    result = provider.send(
        mail(recipient="a@example.com, A Person <a@EXAMPLE.com>, b@example.com, a@example.com")
    )
    assert result.is_success()
    [message] = mail_api.messages()
    assert message["rcpt_tos"] == ["a@example.com", "b@example.com"]
    assert dict(message["headers"])["To"] == "a@example.com, b@example.com"


def test_an_internationalised_domain_goes_out_in_ascii_to_a_relay_without_smtputf8(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    """Accepted at the door, then refused for every recipient of the message by a relay
    that does not offer SMTPUTF8 (most do not): the domain is sent as DNS knows it."""
    # IDNA 2008, as DNS has them: ß and ς are letters of their own (IDNA 2003, the standard
    # library's codec, wrote straße.de as strasse.de: someone else's domain).
    to = "ops@bücher.example, Jürgen <j@müller.example>, a@straße.de, b@ςa.example"
    result = provider.send(mail(recipient=to))
    assert result.is_success()
    [message] = mail_api.messages()
    assert message["rcpt_tos"] == [
        "ops@xn--bcher-kva.example",
        "j@xn--mller-kva.example",
        "a@xn--strae-oqa.de",
        "b@xn--a-xmb.example",
    ]
    to = dict(message["headers"])["To"]
    assert "ops@xn--bcher-kva.example" in to
    assert "j@xn--mller-kva.example" in to


def test_a_refused_reset_ends_the_session_and_the_next_message_takes_a_new_one() -> None:
    """The RSET after a refusal answered 451: the server's transaction was still open, and
    the next, unrelated message was dead-lettered for "503 nested MAIL command"."""
    handler = RefusesReset()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    smtp = SMTPProvider("127.0.0.1", controller.port, starttls=False, timeout=5)
    try:
        with pytest.raises(NotificationDeliveryError, match=r"554 5\.7\.1 refused") as caught:
            smtp.send(mail(idempotency_id="first"))
        assert not caught.value.retryable  # the message's refusal, not the RSET's
        assert smtp.send(mail(idempotency_id="second")).is_success()
    finally:
        smtp.close()
        controller.stop()
    assert handler.sessions == 2
    assert len(handler.received) == 1


def test_every_recipient_refused_is_an_error(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    mail_api.http.post("/sandbox/smtp/refuse", json={"recipients": {"gone@example.com": 550}})
    with pytest.raises(NotificationDeliveryError, match="refused every recipient") as caught:
        provider.send(mail(recipient="gone@example.com"))
    assert caught.value.status_code == 550
    assert not caught.value.retryable
    assert mail_api.messages() == []


def test_send_bulk_reports_failures_per_message(
    provider: SMTPProvider, mail_api: SandboxClient
) -> None:
    mail_api.smtp_faults({}, {"status": 550})
    results = provider.send_bulk([mail(idempotency_id=f"b{i}") for i in range(3)])
    assert [r.status for r in results] == [
        NotificationStatus.SENT,
        NotificationStatus.FAILED,
        NotificationStatus.SENT,
    ]
    assert results[1].error_message is not None
    assert "550" in results[1].error_message
    assert not results[1].is_retriable()


# -- credentials, TLS and secrets ----------------------------------------------------------


def test_authentication_failure_is_a_config_error_without_the_password(
    mail_sandbox: SandboxServer, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert mail_sandbox.smtp_port is not None
    wrong = "Wr0ng-" + SMTP_PASSWORD
    smtp = SMTPProvider(
        "127.0.0.1",
        mail_sandbox.smtp_port,
        username=SMTP_USER,
        password=wrong,
        from_addr="alerts@example.com",
        tls_context=client_tls(ca),
        timeout=2,
    )
    with pytest.raises(NotificationConfigError) as caught:
        smtp.send(mail())
    assert "535" in str(caught.value)
    assert not caught.value.retryable
    assert smtp.health_check() is False
    smtp.close()
    encoded = base64.b64encode(wrong.encode()).decode()
    for text in (str(caught.value), repr(caught.value), repr(smtp), caplog.text):
        assert wrong not in text
        assert encoded not in text


def refused_at_auth(ca: trustme.CA, authenticator: Any) -> NotificationError:
    """What sending one message raises through a STARTTLS server whose ``authenticator``
    (aiosmtpd's) answers the login."""
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    controller = Controller(
        Recorder(),
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
    )
    controller.start()
    smtp = logged_in(controller.port, ca, timeout=5)
    try:
        with pytest.raises(NotificationError) as caught:
            smtp.send(mail())
    finally:
        smtp.close()
        controller.stop()
    return caught.value


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        # The relay's directory is down: try again, as for any 4xx (it was dead-lettered
        # at once as a configuration error).
        ("454 4.7.0 Temporary authentication failure", True),
        # A relay that quotes what it was sent: AUTH PLAIN's base64 blob, the password in it.
        ("535 5.7.8 credentials {blob} rejected", False),
    ],
    ids=["454 temporary", "535 echoing the blob"],
)
def test_an_auth_refusal_is_retried_when_temporary_and_never_shows_the_password(
    answer: str, retried: bool, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    blob = base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode()

    def refuse(*_: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=answer.format(blob=blob))

    error = refused_at_auth(ca, refuse)
    assert error.retryable is retried
    assert isinstance(error, NotificationDeliveryError if retried else NotificationConfigError)
    assert answer.split()[0] in str(error)
    for text in (str(error), repr(error), caplog.text):
        assert SMTP_PASSWORD not in text
        assert blob not in text


def test_a_421_to_auth_is_retried_in_the_servers_words(ca: trustme.CA) -> None:
    """aiosmtplib hangs up on a 421 and then tried the server's next AUTH method on the
    closed connection: the operator read "Server not connected", not the server's reason."""
    tried: list[str] = []

    def closing(
        _server: object, _session: object, _envelope: object, mechanism: str, *_: Any
    ) -> AuthResult:
        tried.append(mechanism)
        return AuthResult(success=False, handled=False, message="421 4.3.2 Directory restarting")

    error = refused_at_auth(ca, closing)
    assert type(error) is NotificationDeliveryError
    assert error.retryable
    assert error.status_code == 421
    assert str(error).endswith("closed the session at AUTH: 421 4.3.2 Directory restarting")
    assert len(tried) == 1  # no second method on a session the server closed


def test_auth_offered_only_after_starttls_is_named_when_starttls_is_off(
    mail_sandbox: SandboxServer, ca: trustme.CA
) -> None:
    """SMTP_STARTTLS=false against a relay that offers AUTH only once encrypted: the error
    said "does not offer AUTH" and nothing of why."""
    smtp = sandbox_provider(mail_sandbox, ca, starttls=False)
    try:
        with pytest.raises(NotificationConfigError) as caught:
            smtp.send(mail())
    finally:
        smtp.close()
    assert "does not offer AUTH" in str(caught.value)
    assert "SMTP_STARTTLS=false turned it off" in str(caught.value)


def test_password_is_never_logged_on_success(
    provider: SMTPProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider.send(mail())
    assert SMTP_PASSWORD not in caplog.text
    assert SMTP_PASSWORD not in repr(provider)
    assert SMTP_PASSWORD not in str(provider)
    assert "password='***'" in repr(provider)


def test_untrusted_certificate_is_a_config_error(mail_sandbox: SandboxServer) -> None:
    assert mail_sandbox.smtp_port is not None
    smtp = SMTPProvider(
        "127.0.0.1",
        mail_sandbox.smtp_port,
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        from_addr="alerts@example.com",
        timeout=2,
    )
    with pytest.raises(NotificationConfigError, match="certificate"):
        smtp.send(mail())
    smtp.close()


def test_mail_before_starttls_is_refused_by_the_server(
    mail_sandbox: SandboxServer,
) -> None:
    assert mail_sandbox.smtp_port is not None
    smtp = SMTPProvider(
        "127.0.0.1", mail_sandbox.smtp_port, from_addr="alerts@example.com", starttls=False
    )
    with pytest.raises(NotificationConfigError, match="530"):
        smtp.send(mail())
    smtp.close()


def test_the_password_goes_only_over_tls_unless_plain_text_is_chosen(
    mail_sandbox: SandboxServer, ca: trustme.CA
) -> None:
    """A server that offers AUTH but no STARTTLS (or a path that strips STARTTLS from its
    list): with STARTTLS on auto, the password is not sent; SMTP_STARTTLS=false sends it
    in clear, as chosen; where STARTTLS is offered, auto logs in over it."""
    plain = SinkOptions(username=SMTP_USER, password=SMTP_PASSWORD)
    with SandboxServer(smtp_port=0, sink=plain) as clear_sink:
        assert clear_sink.smtp_port is not None

        def provider(starttls: bool | None) -> SMTPProvider:
            return SMTPProvider(
                "127.0.0.1",
                clear_sink.smtp_port or 0,
                username=SMTP_USER,
                password=SMTP_PASSWORD,
                from_addr="alerts@example.com",
                starttls=starttls,
                timeout=2,
            )

        auto = provider(None)
        with pytest.raises(NotificationDeliveryError) as refused:
            auto.send(mail())
        assert refused.value.retryable  # another node, or path, may offer it next time
        assert "does not offer STARTTLS: the password for 'gds-mailer' is not sent in clear" in (
            str(refused.value)
        )
        assert "SMTP_STARTTLS=false" in str(refused.value)
        assert auto.diagnose() is not None  # `config check` says so too
        auto.close()
        assert clear_sink.mailbox.stats()["logins"] == {"tls": 0, "clear": 0}
        assert clear_sink.mailbox.messages() == []

        required = provider(True)
        with pytest.raises(NotificationDeliveryError, match="which SMTP_STARTTLS=true requires"):
            required.send(mail())
        required.close()
        assert clear_sink.mailbox.stats()["logins"] == {"tls": 0, "clear": 0}

        chosen = provider(False)
        assert chosen.send(mail()).status == NotificationStatus.SENT
        chosen.close()
        assert clear_sink.mailbox.stats()["logins"] == {"tls": 0, "clear": 1}

    assert mail_sandbox.smtp_port is not None
    over_tls = sandbox_provider(mail_sandbox, ca, starttls=None)
    assert over_tls.send(mail()).status == NotificationStatus.SENT
    over_tls.close()
    assert mail_sandbox.mailbox.stats()["logins"] == {"tls": 1, "clear": 0}


def test_health_check(provider: SMTPProvider, mail_api: SandboxClient) -> None:
    assert provider.health_check() is True
    assert mail_api.messages() == []


def test_provider_from_settings(
    mail_sandbox: SandboxServer,
    ca: trustme.CA,
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    mail_api: SandboxClient,
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mail_sandbox.smtp_port),
        "SMTP_USERNAME": SMTP_USER,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_FROM": "Ops <ops@example.com>",
        "SMTP_STARTTLS": "true",
        "SMTP_CA_FILE": str(ca_file),
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert SMTP_PASSWORD not in repr(settings)
    with SMTPProvider.from_settings(settings) as smtp:
        assert smtp.send(mail()).is_success()
    assert mail_api.messages()[0]["mail_from"] == "ops@example.com"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SMTP_PORT": "70000"}, "SMTP_PORT: Input should be less than or equal to 65535"),
        ({"SMTP_TIMEOUT": "soon"}, "SMTP_TIMEOUT: Input should be a valid number"),
        ({"SMTP_FROM": "not an address"}, "SMTP_FROM: "),
        ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS: Input should be a valid boolean"),
        ({"SMTP_USE_TLS": "true", "SMTP_STARTTLS": "true"}, "cannot both be true"),
        ({"SMTP_USERNAME": "u"}, "SMTP_USERNAME and SMTP_PASSWORD must be set together"),
        ({"SMTP_CA_FILE": "/nonexistent/ca.pem"}, "SMTP_CA_FILE: Path does not point to a file"),
    ],
)
def test_bad_smtp_settings_fail_clearly(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NotificationConfigError) as caught:
        load_settings()
    assert message in str(caught.value)


def test_smtp_password_is_not_echoed_in_settings_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    with pytest.raises(NotificationConfigError) as caught:
        load_settings()
    assert "SMTP_USERNAME and SMTP_PASSWORD" in str(caught.value)
    assert SMTP_PASSWORD not in str(caught.value)
