"""SMTP provider on aiosmtplib: the one place this service speaks SMTP.

One session per provider, opened on first use (TCP, TLS or STARTTLS, AUTH) and reused for
every message after it; a session that has sat idle is checked with NOOP, and one the
server has dropped, or answered 421 on, is re-opened. A message whose reused session was
lost before the message went (DATA answered 354) goes once more on a fresh one; after, it
does not, as the server may have taken it. Every failure is classified here, once:

=======================================  ===========================================
what happened                            what the caller gets
=======================================  ===========================================
4xx reply (421, 450, 451, 452)           ``NotificationDeliveryError``, retryable
5xx reply (550, 553, 554), 554 greeting  ``NotificationDeliveryError``, final
2xx/3xx to DATA other than 354           ``NotificationDeliveryError``, retryable
any 2xx to the message                   SENT (RFC 5321 4.2.5: the server took it)
authentication refused (535)             ``NotificationConfigError`` (no password in it)
no answer in time                        ``NotificationTimeoutError(timeout_seconds)``
connection refused / dropped             ``NotificationConnectionError``
TLS certificate not trusted              ``NotificationConfigError``
some recipients refused, others not      SENT result; ``metadata["refused"]`` names them
=======================================  ===========================================

``send()`` is synchronous (scripts, examples): it runs ``asend()`` on an event loop the
provider owns. ``asend()`` is for code already on an event loop (the worker). A session is
tied to the loop it was opened on; using the provider from another loop re-opens it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import aiosmtplib
from aiosmtplib.typing import Default
from pydantic import SecretStr

from config.settings import Settings
from worker.addresses import parse_address
from worker.exceptions import (
    InvalidFieldError,
    NotificationConfigError,
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationError,
    NotificationTimeoutError,
)
from worker.providers.base import (
    BaseNotificationProvider,
    Notification,
    NotificationResult,
    NotificationStatus,
)
from worker.providers.smtp_message import Prepared, build_message, prepare

__all__ = ["SMTPProvider"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A session idle longer than this is checked with NOOP before it is trusted again.
IDLE_CHECK_SECONDS = 5.0


def attempt_seconds(timeout: float, data_timeout: float) -> float:
    """The most one message's attempt may take, session and all: each reply is bounded by
    ``timeout`` (the message's by ``data_timeout``), but a server that slows every reply
    (a tarpit, many recipients) could otherwise hold an attempt past the delivery's claim,
    and another worker would send the message again."""
    return 4 * timeout + data_timeout


class SMTPProvider(BaseNotificationProvider):
    """Sends notifications as email through one SMTP server.

    ``starttls``: ``None`` upgrades when the server offers STARTTLS, ``True`` requires it,
    ``False`` never upgrades. ``use_tls`` is implicit TLS from the first byte (port 465).
    ``tls_context`` replaces the default trust store (a private CA, say). ``timeout`` is
    how long every reply may take, ``data_timeout`` (``timeout`` unless given) the one to
    the message itself: RFC 5321 gives a server ten minutes for it, and a message it took
    but answered too late would be sent again.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 587,
        username: str | None = None,
        password: str | SecretStr | None = None,
        from_addr: str = "gds-notification@localhost",
        starttls: bool | None = None,
        use_tls: bool = False,
        timeout: float = 30.0,
        validate_certs: bool = True,
        tls_context: ssl.SSLContext | None = None,
        data_timeout: float | None = None,
    ) -> None:
        if not host or not host.strip():
            raise NotificationConfigError("SMTP host is required", provider=self.name)
        if not 0 < port < 65536:
            raise NotificationConfigError("SMTP port must be 1-65535", provider=self.name)
        if use_tls and starttls:
            raise NotificationConfigError(
                "use_tls (implicit TLS) and starttls cannot both be on", provider=self.name
            )
        if timeout <= 0 or (data_timeout is not None and data_timeout <= 0):
            raise NotificationConfigError("timeouts must be greater than 0", provider=self.name)
        raw_password = password.get_secret_value() if isinstance(password, SecretStr) else password
        if bool(username) != bool(raw_password):
            raise NotificationConfigError(
                "username and password must be given together", provider=self.name
            )
        self.host = host
        self.port = port
        self.username = username
        self._password = SecretStr(raw_password) if raw_password else None
        try:
            self.from_addr = str(parse_address("from_addr", from_addr))
        except InvalidFieldError as exc:
            raise NotificationConfigError(str(exc), provider=self.name) from None
        self.starttls = starttls
        self.use_tls = use_tls
        self.timeout = float(timeout)
        self.data_timeout = float(data_timeout if data_timeout is not None else timeout)
        self.validate_certs = validate_certs
        self.tls_context = tls_context
        self._smtp: _Session | None = None
        self._smtp_loop: asyncio.AbstractEventLoop | None = None
        self._last_used = 0.0
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._reused = False  # whether the last _session() handed out an existing session
        self._cut_during_data = False  # whether the last attempt was cut off in DATA
        #: How many sessions this provider has opened (reuse shows as a small number).
        self.sessions_opened = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SMTPProvider:
        """The provider the ``SMTP_*`` settings describe."""
        context = None
        if settings.smtp_ca_file is not None:
            context = ssl.create_default_context(cafile=str(settings.smtp_ca_file))
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            from_addr=settings.smtp_from,
            starttls=settings.smtp_starttls,
            use_tls=settings.smtp_use_tls,
            timeout=settings.smtp_timeout,
            validate_certs=settings.smtp_validate_certs,
            tls_context=context,
            data_timeout=settings.smtp_data_wait,
        )

    def __repr__(self) -> str:
        auth = f", username={self.username!r}, password='***'" if self.username else ""
        return f"SMTPProvider(host={self.host!r}, port={self.port}{auth})"

    __str__ = __repr__

    # -- sync front ---------------------------------------------------------------------

    def _run(self, coro: Awaitable[T]) -> T:
        if self._own_loop is None or self._own_loop.is_closed():
            self._own_loop = asyncio.new_event_loop()
        return self._own_loop.run_until_complete(coro)

    def send(
        self, notification: Notification, job_id: str | None = None, at: datetime | None = None
    ) -> NotificationResult:
        """Send one notification as email (job ``job_id``'s, when it is one: its Message-ID
        and X-GDS-Job-Id come from it; ``at``, when it was accepted, its Date: now when not
        given); raises a classified error on failure."""
        return self._run(self.asend(notification, job_id, at))

    def send_bulk(self, notifications: list[Notification]) -> list[NotificationResult]:
        """Send many over one session. A failure becomes a FAILED result for that message
        (``retryable`` says whether to try it again); the rest still go out."""
        return self._run(self.asend_bulk(notifications))

    def health_check(self) -> bool:
        """True when the server accepts a session (and our credentials) and answers NOOP."""
        return self._run(self.ahealth_check())

    def close(self) -> None:
        """QUIT the session and release the provider's own event loop."""
        if self._smtp is not None and self._smtp_loop is self._own_loop:
            self._run(self.aclose())
        else:
            self._forget_session()
        if self._own_loop is not None and not self._own_loop.is_closed():
            self._own_loop.close()
        self._own_loop = None

    # -- async API ----------------------------------------------------------------------

    @property
    def attempt_seconds(self) -> float:
        """How long one message's attempt may take in all (:func:`attempt_seconds`)."""
        return attempt_seconds(self.timeout, self.data_timeout)

    async def asend(
        self, notification: Notification, job_id: str | None = None, at: datetime | None = None
    ) -> NotificationResult:
        """Send one notification as email on the running event loop; one at a time per
        provider (the worker keeps one per thread), as a session carries one transaction."""
        budget = self.attempt_seconds
        self._cut_during_data = False
        try:
            async with asyncio.timeout(budget):
                return await self._asend(notification, job_id, at)
        except TimeoutError:  # the budget's: a reply's own timeout comes out translated
            unsure = ", during DATA, so it may have taken it" if self._cut_during_data else ""
            raise NotificationTimeoutError(
                f"SMTP server {self.host}:{self.port} took more than {budget:g}s in all for "
                f"one message{unsure}",
                budget,
                self.name,
            ) from None

    async def _asend(
        self, notification: Notification, job_id: str | None, at: datetime | None
    ) -> NotificationResult:
        prepared = prepare(notification, self.from_addr, at, job_id)
        smtp: _Session | None = None
        try:
            smtp = await self._session()
            try:
                refused, reply = await self._transmit(smtp, notification, prepared)
            except (aiosmtplib.SMTPException, OSError) as exc:
                if not (self._reused and _hung_up(exc) and not smtp.reached_data):
                    raise
                # The server dropped (or, with 421, is closing) a session we were reusing,
                # as on an idle timeout or a restart, before the message went out: nothing
                # was accepted on it, so one fresh session, once. After DATA the server
                # may have taken the message and only its answer was lost; sending it
                # again here would make that a second email.
                self._forget_session()
                smtp = await self._session()
                refused, reply = await self._transmit(smtp, notification, prepared)
        except asyncio.CancelledError:
            # Cancelled mid-transaction (a caller's timeout): the server's answers still to
            # come would be read as the next message's, so the session is not used again.
            self._cut_during_data = smtp is not None and smtp.reached_data
            self._forget_session()
            raise
        except Exception as exc:
            if _hung_up(exc) or isinstance(exc, OSError) or _out_of_step(exc):
                self._forget_session()
            raise self._translate(exc, after_data=smtp is not None and smtp.reached_data) from None
        self._last_used = time.monotonic()
        rcpt = [r.addr_spec for r in prepared.recipients]
        return self._result(notification, prepared.message_id, rcpt, refused, reply)

    async def _transmit(
        self, smtp: _Session, notification: Notification, prepared: Prepared
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        """Send ``prepared`` over ``smtp``: as the bytes already written when the server
        can take them (an 8-bit body needs 8BITMIME), else as the standard library's
        message, which aiosmtplib writes for what the server offers (as it does the
        options: BODY=8BITMIME when offered, SMTPUTF8 for an address that is not ASCII)."""
        smtp.reached_data = False
        sender = prepared.sender.addr_spec
        rcpt = [r.addr_spec for r in prepared.recipients]
        if prepared.data is not None:
            if smtp.is_ehlo_or_helo_needed:
                await _greet(smtp)
            eight_bit_mime = smtp.supports_extension("8bitmime")
            if eight_bit_mime or not prepared.eight_bit:
                options = ["BODY=8BITMIME"] if eight_bit_mime else []
                return await smtp.sendmail(sender, rcpt, prepared.data, mail_options=options)
        message = (
            prepared.message
            or build_message(notification, self.from_addr, prepared.date, prepared.job_id)[0]
        )
        return await smtp.send_message(message, sender=sender, recipients=rcpt)

    async def asend_bulk(self, notifications: list[Notification]) -> list[NotificationResult]:
        results = []
        for notification in notifications:
            try:
                results.append(await self.asend(notification))
            except NotificationError as exc:
                results.append(
                    NotificationResult(
                        status=NotificationStatus.FAILED,
                        recipient=notification.recipient,
                        provider=self.name,
                        error_message=str(exc),
                        retryable=exc.retryable,
                        metadata={"error": exc.to_dict()},
                    )
                )
        return results

    async def ahealth_check(self) -> bool:
        return await self.adiagnose() is None

    async def adiagnose(self) -> str | None:
        """None when the server accepts a session (and our credentials) and answers NOOP;
        else what went wrong, in the words of the exception tree (no secrets)."""
        try:
            smtp = await self._session()
            await smtp.noop()
        except Exception as exc:
            problem = self._translate(exc)
            logger.warning("smtp health check failed: %s", problem)
            self._forget_session()
            return f"{type(problem).__name__}: {problem}"
        return None

    def diagnose(self) -> str | None:
        """Sync :meth:`adiagnose`."""
        return self._run(self.adiagnose())

    async def aclose(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the session --------------------------------------------------------------------

    async def _session(self) -> _Session:
        """The open session on this loop, checked if idle; else a new one."""
        loop = asyncio.get_running_loop()
        smtp = self._smtp
        self._reused = False
        if smtp is not None and (self._smtp_loop is not loop or not smtp.is_connected):
            self._forget_session()
            smtp = None
        if smtp is not None and time.monotonic() - self._last_used > IDLE_CHECK_SECONDS:
            try:
                await smtp.noop()
            except (aiosmtplib.SMTPException, OSError):
                self._forget_session()
                smtp = None
        if smtp is not None:
            self._reused = True
            return smtp
        smtp = _Session(
            hostname=self.host,
            port=self.port,
            use_tls=self.use_tls,
            # STARTTLS when offered, and a required one checked below, as a refusal that
            # says which setting: aiosmtplib's own is an error retried for an hour.
            start_tls=False if self.use_tls or self.starttls is False else None,
            validate_certs=self.validate_certs,
            tls_context=self.tls_context,
            timeout=self.timeout,
        )
        smtp.data_timeout = self.data_timeout
        try:
            await smtp.connect()
            await self._log_in(smtp)
        except BaseException:
            smtp.close()  # a half-open session (TLS up, AUTH refused) must not linger
            raise
        self._smtp, self._smtp_loop = smtp, loop
        self._last_used = time.monotonic()
        self.sessions_opened += 1
        logger.info("smtp session %d opened to %s:%s", self.sessions_opened, self.host, self.port)
        return smtp

    async def _log_in(self, smtp: _Session) -> None:
        """Check the session is encrypted as the settings ask, then AUTH. The password goes
        only over TLS, unless ``starttls`` is False (plain text chosen): a server that does
        not offer STARTTLS, or someone on the path who strips it from the server's list,
        would otherwise be handed it in clear."""
        where = f"{self.host}:{self.port}"
        encrypted = smtp.get_transport_info("sslcontext") is not None
        # A server that refused EHLO and took HELO offers no extension at all: say why.
        ehlo = f" (it refused EHLO: {smtp.ehlo_refused})" if smtp.ehlo_refused else ""
        # Refused for now, not for good: one node of a relay behind a balancer, or a path
        # that strips STARTTLS, may offer it again at the job's next attempt.
        if self.starttls is True and not encrypted:
            raise NotificationDeliveryError(
                f"SMTP server {where} does not offer STARTTLS{ehlo}, which SMTP_STARTTLS=true "
                "requires",
                retryable=True,
                provider=self.name,
            )
        if self.username is None or self._password is None:
            return
        if not encrypted and self.starttls is None:
            raise NotificationDeliveryError(
                f"SMTP server {where} does not offer STARTTLS{ehlo}: the password for "
                f"{self.username!r} is not sent in clear (SMTP_USE_TLS=true for a server on "
                "implicit TLS, or SMTP_STARTTLS=false to send it in clear on a network you "
                "trust)",
                retryable=True,
                provider=self.name,
            )
        if smtp.is_ehlo_or_helo_needed:  # the server's list again, after STARTTLS
            await smtp.ehlo()
        if not smtp.supports_extension("auth"):
            # Most servers offer AUTH only once the session is encrypted: say so, when it
            # is not for want of SMTP_STARTTLS.
            hint = (
                " (it offers STARTTLS, and many servers offer AUTH only after it: "
                "SMTP_STARTTLS=false turned it off)"
                if not encrypted and smtp.supports_extension("starttls")
                else ""
            )
            raise NotificationConfigError(
                f"SMTP server {where} does not offer AUTH{ehlo}, and SMTP_USERNAME is set{hint}",
                self.name,
            )
        await smtp.login(self.username, self._password.get_secret_value())

    def _forget_session(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            # Closing a transport that belongs to another (or a closed) loop may fail; the
            # session is abandoned either way.
            with contextlib.suppress(Exception):
                smtp.close()

    # -- outcomes -----------------------------------------------------------------------

    def _result(
        self,
        notification: Notification,
        message_id: str,
        recipients: list[str],
        refused: dict[str, aiosmtplib.SMTPResponse],
        reply: str,
    ) -> NotificationResult:
        refused_text = {addr: f"{r.code} {r.message}" for addr, r in refused.items()}
        accepted = [r for r in recipients if r not in refused]
        error = None
        if refused_text:
            error = f"{len(refused_text)} of {len(recipients)} recipients refused: " + "; ".join(
                f"{addr} ({why})" for addr, why in refused_text.items()
            )
            logger.warning("smtp partial delivery %s: %s", message_id, error)
        return NotificationResult(
            status=NotificationStatus.SENT,
            recipient=notification.recipient,
            provider=self.name,
            message_id=message_id,
            error_message=error,
            retryable=any(400 <= r.code < 500 for r in refused.values()),
            metadata={
                "accepted": accepted,
                "refused": dict(refused_text),
                "server_reply": reply,
            },
        )

    def _scrub(self, text: str) -> str:
        """``text`` without the password, as sent or as AUTH encodes it: a server's error
        may echo what it was given (LOGIN's base64 password, PLAIN's whole blob)."""
        if self._password is None:
            return text
        secret = self._password.get_secret_value()
        forms = [secret, _b64(secret)]
        if self.username is not None:
            forms.append(_b64(f"\0{self.username}\0{secret}"))
            forms.append(_b64(f"{self.username}\0{self.username}\0{secret}"))
        for form in forms:
            text = text.replace(form, "***")
        return text

    def _translate(self, exc: BaseException, after_data: bool = False) -> NotificationError:
        """aiosmtplib's errors (and the OS's) as this service's exception tree.
        ``after_data``: the transaction had reached DATA, so a lost connection or a late
        answer may hide a message the server took (sending it again may make two)."""
        if isinstance(exc, NotificationError):
            return exc
        where = f"{self.host}:{self.port}"
        # Only a lost connection or answer leaves it open whether the message was taken.
        unsure = " during DATA, so it may have taken the message" if after_data else ""
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and 400 <= exc.code < 500:
            # 454: the server cannot check credentials now (its directory is down), not
            # that they are wrong: try again later, as for any 4xx.
            text = self._scrub(f"{exc.code} {exc.message}")
            # 421: the server is closing the session, credentials unread.
            why = (
                "closed the session at AUTH"
                if exc.code == 421
                else "could not check the credentials now"
            )
            return NotificationDeliveryError(
                f"SMTP server {where} {why}: {text}",
                exc.code,
                [text],
                retryable=True,
                provider=self.name,
            )
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return NotificationConfigError(
                self._scrub(
                    f"SMTP server {where} refused the credentials for user "
                    f"{self.username!r}: {exc.code} {exc.message}"
                ),
                self.name,
            )
        if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
            waited = self.data_timeout if after_data else self.timeout
            return NotificationTimeoutError(
                f"SMTP server {where} did not answer within {waited:g}s{unsure}",
                waited,
                self.name,
            )
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in exc.recipients]
            texts = [self._scrub(f"{r.recipient}: {r.code} {r.message}") for r in exc.recipients]
            transient = any(400 <= c < 500 for c in codes)
            return NotificationDeliveryError(
                f"SMTP server {where} refused every recipient: " + "; ".join(texts),
                min(codes) if transient else max(codes),
                texts,
                retryable=transient,
                provider=self.name,
            )
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            return NotificationConfigError(
                self._scrub(f"SMTP server {where}: {exc.message}"), self.name
            )
        if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
            # A greeting other than 220. 421 is "busy now" (RFC 5321 3.8): retried. 554 is
            # RFC 5321 3.1's refusal of the whole session ("no SMTP service here"): for
            # good, as any 5xx; a relay refusing for a while says 421. Dead-lettered with
            # the server's words, and replayable once the relay takes us again.
            text = self._scrub(f"{exc.code} {exc.message}")
            return NotificationDeliveryError(
                f"SMTP server {where} refused the session in its greeting: {text}",
                exc.code,
                [text],
                retryable=not 500 <= exc.code < 600,
                provider=self.name,
            )
        if isinstance(exc, _GreetingRefused):
            texts = [self._scrub(f"{exc.code} {exc.message}")]
            refused = exc.command
            if exc.ehlo is not None:
                texts.insert(0, self._scrub(exc.ehlo))
                refused = f"EHLO ({texts[0]}) and then HELO"
            return NotificationDeliveryError(
                f"SMTP server {where} refused {refused}: {texts[-1]}",
                exc.code,
                texts,
                retryable=not 500 <= exc.code < 600,
                provider=self.name,
            )
        if isinstance(exc, aiosmtplib.SMTPConnectError):
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                return NotificationConfigError(
                    f"SMTP server {where} presented a certificate we do not trust: "
                    f"{cause.verify_message}",
                    self.name,
                )
            return NotificationConnectionError(
                f"cannot connect to SMTP server {where}: {exc}", self.name
            )
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            return NotificationConnectionError(
                f"SMTP server {where} closed the connection{unsure}: {exc}", self.name
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            text = self._scrub(f"{exc.code} {exc.message}")
            if exc.code == 535 or exc.code == 530:
                return NotificationConfigError(f"SMTP server {where}: {text}", self.name)
            step = ", out of step with the commands sent" if exc.code < 400 else ""
            return NotificationDeliveryError(
                f"SMTP server {where} answered {text}{step}",
                exc.code,
                [text],
                # A 2xx or 3xx where an error was taken: the exchange is out of step (the
                # session is dropped). Before the message went (DATA answered other than
                # 354 included), nothing was taken: try again. After it, the server may
                # have taken the message: not again (no second copy).
                retryable=400 <= exc.code < 500 or (exc.code < 400 and not after_data),
                provider=self.name,
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return NotificationConfigError(
                f"SMTP server {where} presented a certificate we do not trust: "
                f"{exc.verify_message}",
                self.name,
            )
        if isinstance(exc, OSError):
            return NotificationConnectionError(
                f"SMTP connection to {where} failed{unsure}: {type(exc).__name__}: {exc}",
                self.name,
            )
        if isinstance(exc, aiosmtplib.SMTPException):
            return NotificationDeliveryError(
                self._scrub(f"SMTP error from {where}: {exc}"), provider=self.name
            )
        return NotificationDeliveryError(
            f"unexpected SMTP failure talking to {where}: {type(exc).__name__}",
            provider=self.name,
        )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class _GreetingRefused(aiosmtplib.SMTPHeloError):
    """EHLO or HELO refused: ``command`` names which, ``code`` and ``message`` are its
    reply, ``ehlo`` the EHLO refusal a refused HELO followed. An ``SMTPHeloError``, so
    aiosmtplib still falls back to HELO on a refused EHLO."""

    def __init__(self, command: str, code: int, message: str, ehlo: str | None = None) -> None:
        super().__init__(code, message)
        self.command = command
        self.ehlo = ehlo


class _Session(aiosmtplib.SMTP):
    """aiosmtplib's client, noting whether the transaction under way has sent the message
    (DATA answered 354): up to then a lost connection or a refusal cost nothing, after
    it the server may have taken the message and lost only its answer. A 421 to DATA
    ends the session, as aiosmtplib ends it on a 421 to any other command, and the
    server's refusal is what is reported, not the RSET that aiosmtplib sends after it."""

    reached_data = False
    #: How long the replies to DATA and to the message may take (``SMTP_DATA_TIMEOUT``).
    data_timeout: float | None = None
    #: The server's refusal of EHLO in this session (``"550 ..."``), if it refused it.
    ehlo_refused: str | None = None

    async def ehlo(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        # aiosmtplib's refusal names neither the command nor, once HELO is refused after
        # it, what the server said to EHLO: the operator read only "answered 550 ...".
        try:
            response = await super().ehlo(*args, **kwargs)
        except aiosmtplib.SMTPHeloError as exc:
            self.ehlo_refused = f"{exc.code} {exc.message}"
            raise _GreetingRefused("EHLO", exc.code, exc.message) from None
        self.ehlo_refused = None
        return response

    async def helo(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        try:
            return await super().helo(*args, **kwargs)
        except aiosmtplib.SMTPHeloError as exc:
            raise _GreetingRefused("HELO", exc.code, exc.message, self.ehlo_refused) from None

    async def login(
        self,
        username: str | bytes,
        password: str | bytes,
        /,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        """aiosmtplib's login (each AUTH method both sides know, in aiosmtplib's order), ending at
        a refusal that closed the session: after a 421, which aiosmtplib hangs up on,
        it tried the next method on the closed connection, and "Server not connected"
        replaced the server's own words. Called once the server's list is known."""
        refusal: aiosmtplib.SMTPException = aiosmtplib.SMTPException(
            "No suitable authentication method found."
        )
        for method in self.supported_auth_methods:
            auth = getattr(self, f"auth_{method.replace('-', '')}")
            try:
                response: aiosmtplib.SMTPResponse = await auth(username, password, timeout=timeout)
            except aiosmtplib.SMTPAuthenticationError as exc:
                refusal = exc
                if not self.is_connected:
                    break
            else:
                return response
        raise refusal

    async def data(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        protocol = self.protocol
        # With the connection already gone (a 421 at a later RCPT closes it), nothing goes.
        self.reached_data = protocol is not None
        if kwargs.get("timeout", Default.token) is Default.token and self.data_timeout:
            kwargs["timeout"] = self.data_timeout
        # Which reply went wrong decides what the server may hold: the first is DATA's
        # own, and until it is 354 the message has not been sent; the second is the
        # message's. aiosmtplib raises the same error for both, so the replies are counted.
        replies = 0
        if protocol is not None:
            read = protocol.read_response

            async def counted(*args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
                nonlocal replies
                replies += 1
                return await read(*args, **kwargs)

            protocol.read_response = counted  # type: ignore[method-assign]
        try:
            return await super().data(*args, **kwargs)
        except aiosmtplib.SMTPResponseException as exc:
            if replies > 1 and 200 <= exc.code < 300:
                # Any 2yz to the message is the server taking it (RFC 5321 4.2.5), however
                # odd the code: reporting it failed would have it replayed, a second copy.
                return aiosmtplib.SMTPResponse(exc.code, exc.message)
            if exc.code == 421:
                # The server is closing the channel (RFC 5321 4.2.2). aiosmtplib would send
                # RSET on it next; a server that neither answers nor hangs up would hold
                # the attempt for the timeout and have the 421 reported as a timeout.
                self.close()
            raise
        finally:
            if protocol is not None:
                del protocol.read_response
            if replies < 2:
                self.reached_data = False  # the message itself never went

    async def rset(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        # aiosmtplib sends RSET only after an error reply, and keeps that reply unless the
        # RSET itself times out. A server that answered (a 554, say) and then went silent
        # must not have its refusal reported as a timeout that "may have taken" the
        # message. The timeout has already closed the session.
        # A RSET refused leaves the transaction open on the server (the next MAIL gets
        # "503 nested MAIL command"): the session is ended, and the next message takes a
        # new one. aiosmtplib swallows the refusal, so it is seen here or not at all.
        try:
            return await super().rset(*args, **kwargs)
        except aiosmtplib.SMTPTimeoutError as exc:
            raise aiosmtplib.SMTPServerDisconnected(f"no answer to RSET: {exc}") from exc
        except aiosmtplib.SMTPResponseException:
            self.close()
            raise


def _hung_up(exc: BaseException) -> bool:
    """Whether the server ended the session: it dropped the connection, or answered 421,
    which says it is closing the channel (RFC 5321 4.2.2)."""
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return any(r.code == 421 for r in exc.recipients)
    return False


def _out_of_step(exc: BaseException) -> bool:
    """A success or intermediate reply where aiosmtplib expected another: the replies no
    longer pair with the commands on this session."""
    return isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code < 400


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO for a server that knows only that, as aiosmtplib greets before it
    sends: what the server offers is known before a message is chosen for it."""
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo()
