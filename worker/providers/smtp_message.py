"""Building email messages from notifications: pure functions, no I/O.

Everything that becomes a header is checked before any connection is opened: a CR or LF in
a header value (the classic header-injection attack) or an address that does not parse is
refused with a :class:`~worker.exceptions.InvalidFieldError` (never retried) that names
the field (:mod:`worker.addresses` does the checking). The standard library's ``email``
package does the encoding: RFC 2047 for non-ASCII subjects and names, quoted-printable or
base64 UTF-8 for bodies.

:func:`prepare` is what the provider sends: most alert mail (a plain-text body of short
lines, recipients without display names, ASCII addresses) is written straight to the bytes
that go on the wire, the very bytes the standard library would write for the same
message (tests/test_smtp_message.py compares them) at a fifteenth of the cost; the rest is
built by :func:`build_message`. Either way the header block is checked the same way.
"""

from __future__ import annotations

import email.policy
import functools
import hashlib
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from typing import Any

from worker.addresses import (
    check_email_headers,
    invalid,
    is_dot_atom,
    parse_address,
    parse_recipients,
)
from worker.notification import Notification, NotificationPriority, content_key, truncate

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


def message_id_for(notification: Notification, domain: str, job_id: str | None = None) -> str:
    """``<gds.HASH@domain>`` from the idempotency id, else the job's id, else the content:
    every resend of the same job carries the same Message-ID. Not the content when there
    is a job: receivers (Gmail, Exchange) drop a Message-ID they have seen, so the same
    alert text sent again next week would vanish."""
    if notification.idempotency_id:
        seed = notification.idempotency_id
    elif job_id:
        seed = f"job:{job_id}"
    else:
        seed = content_key(notification)
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:32]
    return f"<gds.{digest}@{domain}>"


def build_message(
    notification: Notification,
    from_addr: str,
    now: datetime | None = None,
    job_id: str | None = None,
) -> tuple[EmailMessage, Address, list[Address]]:
    """The message (of job ``job_id``, when it is one), its sender and its recipients;
    raises before any I/O if invalid."""
    sender, recipients = _checked(notification, from_addr)
    headers = _headers(notification, sender, now, job_id)
    return _built(notification, sender, recipients, headers), sender, recipients


@dataclass(frozen=True)
class Prepared:
    """A notification ready to go out. ``data`` is the message as it goes on the wire
    when it could be written directly (``eight_bit``: its body needs a server that offers
    8BITMIME); otherwise ``message`` is the standard library's message, which the SMTP
    client writes for what the server offers. ``date`` is the Date header's moment, for a
    message built again for a server without 8BITMIME."""

    sender: Address
    recipients: list[Address]
    message_id: str
    date: datetime
    job_id: str | None = None
    data: bytes | None = None
    eight_bit: bool = False
    message: EmailMessage | None = None


def prepare(
    notification: Notification,
    from_addr: str,
    now: datetime | None = None,
    job_id: str | None = None,
) -> Prepared:
    """The message for ``notification`` (of job ``job_id``, when it is one), written
    directly when it can be; raises before any I/O if invalid, as :func:`build_message`
    does."""
    sender, recipients = _checked(notification, from_addr)
    now = now or datetime.now(UTC)
    headers = _headers(notification, sender, now, job_id)
    message_id = dict(headers)["Message-ID"]
    written = _written(notification, sender, _sender(from_addr)[1], recipients, headers)
    if written is None:
        message = _built(notification, sender, recipients, headers)
        return Prepared(sender, recipients, message_id, now, job_id, message=message)
    data, eight_bit = written
    return Prepared(sender, recipients, message_id, now, job_id, data=data, eight_bit=eight_bit)


@functools.lru_cache(maxsize=32)
def _sender(from_addr: str) -> tuple[Address, bytes]:
    """The sender and its From line. One SMTP_FROM per provider: parsed and written once,
    not for every message."""
    sender = parse_address("from_addr", from_addr)
    return sender, _line("From", str(sender), sender)


def _checked(notification: Notification, from_addr: str) -> tuple[Address, list[Address]]:
    sender, _ = _sender(from_addr)
    recipients = parse_recipients("recipient", notification.recipient)
    check_email_headers(notification)
    return sender, recipients


#: The longest Subject sent, cut as PagerDuty cuts a summary: a longer one is no summary,
#: and the standard library folds a header in time that grows with its square (a subject
#: of a megabyte took 16 s of a worker's CPU at every attempt).
SUBJECT_MAX_CHARS = 1024


def _headers(
    notification: Notification, sender: Address, now: datetime | None, job_id: str | None
) -> list[tuple[str, str]]:
    """Every header after From and To, in the order written."""
    headers = [
        ("Subject", truncate(notification.subject, SUBJECT_MAX_CHARS)),
        ("Date", format_datetime((now or datetime.now(UTC)).astimezone(UTC))),
        ("Message-ID", message_id_for(notification, sender.domain, job_id)),
        ("X-GDS-Priority", notification.priority.value),
    ]
    if notification.alert_name:
        headers.append(("X-GDS-Alert-Name", notification.alert_name))
    if notification.idempotency_id:
        headers.append(("X-GDS-Idempotency-Id", notification.idempotency_id))
    if job_id:
        headers.append(("X-GDS-Job-Id", job_id))
    headers += IMPORTANCE_HEADERS.get(notification.priority, {}).items()
    return headers


def _built(
    notification: Notification,
    sender: Address,
    recipients: list[Address],
    headers: list[tuple[str, str]],
) -> EmailMessage:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    _write_to(msg, sender, recipients)
    for name, value in headers:
        msg[name] = value
    msg.set_content(notification.body or "", charset="utf-8")
    if notification.body_html:
        msg.add_alternative(notification.body_html, subtype="html", charset="utf-8")
    verify_headers(msg, sender, recipients)
    return msg


# -- writing a message directly ------------------------------------------------------

#: A header value the standard library writes unchanged when its line fits: words of
#: printable ASCII one space apart. Anything else is folded by the standard library.
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*\Z")
#: Where the policy folds lines (78; no limit would be None, as the standard library reads it).
_LINE_LIMIT = POLICY.max_line_length or sys.maxsize
_TEXT_PART = (
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: %s\r\n"
    b"MIME-Version: 1.0\r\n"
)
_TEXT_PART_NAMES = ["content-type", "content-transfer-encoding", "mime-version"]


def _line(name: str, value: str, header: Any = None) -> bytes:
    """The header line as the standard library writes it (SMTP policy); ``header`` is
    the value it is given when that is not ``value`` (addresses)."""
    if len(name) + 2 + len(value) <= _LINE_LIMIT and _PLAIN_VALUE.match(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return POLICY.fold_binary(
        name, POLICY.header_factory(name, value if header is None else header)
    )


def _written(
    notification: Notification,
    sender: Address,
    from_line: bytes,
    recipients: list[Address],
    headers: list[tuple[str, str]],
) -> tuple[bytes, bool] | None:
    """The message's bytes and whether its body is 8-bit, exactly as the standard library
    writes them (SMTP policy, a server with 8BITMIME); None when the message is not plain
    text of short lines, or a recipient is not ASCII, has a display name or a quoted local
    part."""
    if notification.body_html or not sender.addr_spec.isascii():
        return None
    if any(map(_not_bare, recipients)):
        return None
    # What email.contentmanager does for text: lines that fit are sent as they are (7bit,
    # or 8bit when not ASCII); longer ones would be quoted-printable or base64.
    lines = (notification.body or "").encode("utf-8").splitlines()
    if any(len(line) > _LINE_LIMIT for line in lines):
        return None
    eight_bit = not all(line.isascii() for line in lines)
    to = ", ".join(r.addr_spec for r in recipients)
    head = b"".join(
        [
            from_line,
            _line("To", to, recipients),
            *(_line(name, value) for name, value in headers),
            _TEXT_PART % (b"8bit" if eight_bit else b"7bit"),
        ]
    )
    expected = ["from", "to", *(name.lower() for name, _ in headers), *_TEXT_PART_NAMES]
    _verify_block(head, expected, recipients)
    return head + b"\r\n" + b"\r\n".join(lines) + b"\r\n", eight_bit


def _not_bare(address: Address) -> bool:
    return (
        bool(address.display_name)
        or not address.addr_spec.isascii()
        or not is_dot_atom(address.username)
    )


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
    if not any(map(_not_bare, recipients)) and _bare_to(block) == ", ".join(wanted).encode():
        # Exactly the bare addresses (dot-atoms, ASCII), comma-separated: nothing a parser
        # could read differently (the common case, and cheaper than parsing the block).
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
        _verify_block(_header_block(msg, policy), expected, recipients)


def _verify_block(block: bytes, expected: list[str], recipients: list[Address]) -> None:
    names = []
    for line in block.split(b"\r\n")[:-1]:
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise invalid("message", "a header could not be written safely (bare CR, LF or NUL)")
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
