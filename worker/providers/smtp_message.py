"""Building email messages from notifications: pure functions, no I/O.

Everything that becomes a header is checked before any connection is opened: a CR or LF in
a header value (the classic header-injection attack) or an address that does not parse is
refused with a :class:`~worker.exceptions.InvalidFieldError` (never retried) that names
the field (:mod:`worker.addresses` does the checking). The standard library's ``email``
package does the encoding: RFC 2047 for non-ASCII subjects and names, quoted-printable or
base64 UTF-8 for bodies.
"""

from __future__ import annotations

import email.policy
import hashlib
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from typing import Any

from worker.addresses import check_header_value, invalid, parse_address, parse_recipients
from worker.notification import Notification, NotificationPriority, content_key

#: Headers a mail client shows as "important", by priority (HIGH and above only).
IMPORTANCE_HEADERS: dict[NotificationPriority, dict[str, str]] = {
    NotificationPriority.HIGH: {"Importance": "high", "X-Priority": "2 (High)"},
    NotificationPriority.CRITICAL: {
        "Importance": "high",
        "X-Priority": "1 (Highest)",
        "Priority": "urgent",
    },
    NotificationPriority.EMERGENCY: {
        "Importance": "high",
        "X-Priority": "1 (Highest)",
        "Priority": "urgent",
    },
}


class _HeaderClasses(HeaderRegistry):
    """The standard library's header registry, but each header's class built once: the
    registry builds a new class with ``type()`` for every header it makes (about a tenth
    of building a message), and the class depends on the header's name alone. The names
    are the few this module writes, so the cache stays small."""

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = super().__getitem__(name)
        return built


#: How messages are written: SMTP's CRLF lines, with the header classes cached.
POLICY = email.policy.SMTP.clone(header_factory=_HeaderClasses())
#: How a header block is read back to check it.
READ_BACK = email.policy.default.clone(header_factory=_HeaderClasses())


def message_id_for(notification: Notification, domain: str) -> str:
    """``<gds.HASH@domain>`` from the idempotency id (or the content when there is none):
    every resend of the same job carries the same Message-ID."""
    seed = notification.idempotency_id or content_key(notification)
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:32]
    return f"<gds.{digest}@{domain}>"


def build_message(
    notification: Notification, from_addr: str, now: datetime | None = None
) -> tuple[EmailMessage, Address, list[Address]]:
    """The message, its sender and its recipients; raises before any I/O if invalid."""
    sender = parse_address("from_addr", from_addr)
    recipients = parse_recipients("recipient", notification.recipient)
    subject = check_header_value("subject", notification.subject)
    for field in ("alert_name", "idempotency_id"):
        value = getattr(notification, field)
        if value is not None:
            check_header_value(field, str(value))

    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    _write_to(msg, sender, recipients)
    msg["Subject"] = subject
    msg["Date"] = format_datetime((now or datetime.now(UTC)).astimezone(UTC))
    msg["Message-ID"] = message_id_for(notification, sender.domain)
    msg["X-GDS-Priority"] = notification.priority.value
    if notification.alert_name:
        msg["X-GDS-Alert-Name"] = notification.alert_name
    if notification.idempotency_id:
        msg["X-GDS-Idempotency-Id"] = notification.idempotency_id
    for name, value in IMPORTANCE_HEADERS.get(notification.priority, {}).items():
        msg[name] = value
    msg.set_content(notification.body or "", charset="utf-8")
    if notification.body_html:
        msg.add_alternative(notification.body_html, subtype="html", charset="utf-8")
    verify_headers(msg, sender, recipients)
    return msg, sender, recipients


def _header_block(msg: EmailMessage, policy: email.policy.EmailPolicy[Any]) -> bytes:
    # Exactly what BytesGenerator writes for the top-level headers.
    return b"".join(policy.fold_binary(name, value) for name, value in msg.items())


def sent_forms(sender: Address, recipients: list[Address]) -> tuple[Any, ...]:
    """The serialisations an SMTP client may send this message in. Like aiosmtplib: with
    SMTPUTF8 when an address is not ASCII (only that form can carry it), else plain (RFC
    2047), or SMTPUTF8 if the server offers it."""
    if all(a.addr_spec.isascii() for a in [sender, *recipients]):
        return (email.policy.SMTP, email.policy.SMTPUTF8)
    return (email.policy.SMTPUTF8,)


def _to_problem(block: bytes, recipients: list[Address]) -> bool:
    """True when the To header, read back from ``block``, is not exactly ``recipients``."""
    wanted = [r.addr_spec for r in recipients]
    if _bare_to(block) == ", ".join(wanted).encode("ascii", "replace"):
        # Exactly the bare addresses, comma-separated: nothing a parser could read
        # differently (the common case, and cheaper than parsing the block).
        return False
    parsed = BytesHeaderParser(policy=READ_BACK).parsebytes(block + b"\r\n")
    try:
        read = str(parsed["To"])
    except (AttributeError, IndexError, TypeError, ValueError):
        # The standard library's address parser crashes on some folded display names
        # (found by tests/test_hostile_properties.py): a header nobody can read back.
        return True
    return [addr for _, addr in getaddresses([read])] != wanted


def _bare_to(block: bytes) -> bytes | None:
    """The To header's value in ``block``, unfolded, or None when there is not one."""
    value: list[bytes] | None = None
    for line in block.split(b"\r\n"):
        if value is not None and line[:1] in (b" ", b"\t"):
            value.append(line)
        elif value is not None:
            break
        elif line[:3].lower() == b"to:":
            value = [line[3:]]
    return None if value is None else b"".join(value).strip()


def verify_headers(msg: EmailMessage, sender: Address, recipients: list[Address]) -> None:
    """Refuse a message whose serialised header block is not exactly the headers we set,
    each on clean CRLF lines, with a To header that reads back as exactly ``recipients``:
    the last line of defence against header injection through a bug in any encoder (the
    standard library's included). Checks every form the message may be sent in."""
    expected = [name.lower() for name in msg]
    forms = sent_forms(sender, recipients)
    if all(str(value).isascii() for value in msg.values()):
        forms = forms[:1]  # every form writes ASCII-only headers the same way
    for policy in forms:
        block = _header_block(msg, policy)
        names = []
        for line in block.split(b"\r\n")[:-1]:
            if b"\r" in line or b"\n" in line or b"\x00" in line:
                raise invalid(
                    "message", "a header could not be written safely (bare CR, LF or NUL)"
                )
            if line[:1] not in (b" ", b"\t"):
                names.append(line.partition(b":")[0].decode("ascii", "replace").lower())
        if names != expected:
            raise invalid("message", "its headers could not be written safely (header injection)")
        if _to_problem(block, recipients):
            raise invalid("recipient", "the addresses cannot be written as a To header")


def _write_to(msg: EmailMessage, sender: Address, recipients: list[Address]) -> None:
    msg["To"] = recipients
    if not any(r.display_name for r in recipients):
        return  # bare addresses fold safely; verify_headers still reads them back
    forms = sent_forms(sender, recipients)
    if any(_to_problem(_header_block(msg, form), recipients) for form in forms):
        # The standard library can fold an address list wrongly (before 3.13 it may encode
        # the comma after a non-ASCII display name as "=?utf-8?q?=2C?=", merging two
        # addresses for every reader). Then the addresses go out without display names.
        msg.replace_header("To", [Address(addr_spec=r.addr_spec) for r in recipients])
