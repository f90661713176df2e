"""Email addresses and header values, checked before anything is built or sent.

Used by the SMTP message builder, by intake (an email job whose recipient can never be an
address is refused at the door) and by the settings (``SMTP_FROM``). A value that can
never work raises :class:`~worker.exceptions.InvalidFieldError` naming the field.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import getaddresses

import idna

from worker.exceptions import InvalidFieldError
from worker.notification import is_one_line

__all__ = [
    "check_email_headers",
    "check_header_value",
    "invalid",
    "is_dot_atom",
    "parse_address",
    "parse_recipients",
]

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: The start of an RFC 2047 encoded word (``=?charset?q?...?=``). The standard library
#: decodes such text when it refolds a header, and before Python 3.11.10 / 3.12.5 wrote the
#: result out unchecked (CVE-2024-6923): ``=?utf-8?q?=0D=0ABcc:...?=`` in a subject became a
#: real Bcc header. Mail clients decode it on display too, so a sender could forge text.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?")
#: A bare address, dot-atoms (RFC 5322 atext) at an ASCII domain: nearly every address
#: this service sees. It reads the same through the standard library's parser (checked by
#: tests/test_smtp_message.py), which costs ten times as much.
_ATOMS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_BARE_ADDRESS = re.compile(rf"[ \t]*({_ATOMS})@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)[ \t]*\Z")
_DOT_ATOM = re.compile(rf"{_ATOMS}\Z")


def invalid(field: str, problem: str) -> InvalidFieldError:
    """The error for a notification that can never become a valid email."""
    return InvalidFieldError(field, problem, provider="smtp")


def check_header_value(field: str, value: str) -> str:
    if not is_one_line(value):
        raise invalid(
            field,
            "must not contain CR or LF, another line break or a control character "
            "(header injection)",
        )
    if _ENCODED_WORD.search(value):
        raise invalid(
            field,
            "must not contain an RFC 2047 encoded word ('=?charset?q?...'): it would be "
            "decoded into the header (header injection)",
        )
    return value


#: The notification's fields that become email headers besides its addresses.
EMAIL_HEADER_FIELDS = ("subject", "alert_name", "idempotency_id")


def check_email_headers(notification: object) -> None:
    """Each of the notification's :data:`EMAIL_HEADER_FIELDS` that is set, checked as a
    header value; :class:`InvalidFieldError` names the first that cannot be one."""
    for field in EMAIL_HEADER_FIELDS:
        value = getattr(notification, field)
        if value is not None:
            check_header_value(field, str(value))


def _valid_domain(domain: str) -> bool:
    try:
        ascii_domain = _ascii_domain(domain)
    except (UnicodeError, idna.IDNAError):
        return False
    return all(_LABEL.match(label) for label in ascii_domain.split("."))


def _ascii_domain(domain: str) -> str:
    """An internationalised domain as DNS and every relay know it (``xn--`` labels, IDNA
    2008): a relay without SMTPUTF8 refuses the message for a Unicode domain, and for every
    recipient of it; the ASCII form needs nothing of it. (The standard library's IDNA 2003
    codec maps ``ß`` to ``ss``: ``straße.de`` would be ``strasse.de``, someone else's.)"""
    if domain.isascii():
        return domain
    return idna.encode(domain, uts46=True, transitional=False).decode("ascii")


def parse_address(field: str, text: str) -> Address:
    """One ``user@domain`` or ``Name <user@domain>``, validated, as an ``Address`` (its
    domain in ASCII)."""
    check_header_value(field, text)
    bare = _BARE_ADDRESS.match(text)
    if bare is not None and _valid_domain(bare[2]):
        return Address(username=bare[1], domain=_ascii_domain(bare[2]))
    return _parsed(field, text)


def _parsed(field: str, text: str) -> Address:
    # Through the standard library's parser: names, quotes, comments, IDNs.
    pairs = getaddresses([text])
    if len(pairs) != 1 or not pairs[0][1]:
        raise invalid(field, f"{text.strip()!r} is not one email address")
    name, spec = pairs[0]
    try:
        address = Address(display_name=name, addr_spec=spec)
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise invalid(field, f"{spec!r} is not a valid email address ({exc})") from None
    if not address.username or not address.domain or not _valid_domain(address.domain):
        raise invalid(field, f"{spec!r} is not a valid email address")
    if not is_dot_atom(address.username) and not _writable(address):
        raise invalid(
            field,
            f"{spec!r} has a quoted local part that cannot be written back as an address",
        )
    if not address.domain.isascii():
        address = Address(name, address.username, _ascii_domain(address.domain))
    return address


def _writable(address: Address) -> bool:
    # The standard library quotes a local part only when it holds a special character, so
    # '".a"@example.com' comes back as '.a@example.com', which no parser reads; a header
    # holding it cannot be written. Such an address is refused at the door instead.
    try:
        return Address(addr_spec=address.addr_spec).username == address.username
    except (ValueError, IndexError, TypeError, HeaderParseError):
        return False


def is_dot_atom(username: str) -> bool:
    """True when ``username`` is written bare (no quotes) in every header."""
    return _DOT_ATOM.match(username) is not None


def parse_recipients(field: str, text: str) -> list[Address]:
    """Comma-separated addresses (names may be quoted, commas and all), each once; at
    least one."""
    check_header_value(field, text)
    parts = [spec for spec in _split_addresses(text) if spec.strip()]
    if not parts:
        raise invalid(field, "no email address given")
    # An address named twice gets the message once (two RCPTs delivered it twice, under a
    # To that named it twice); a domain's case is no difference, a local part's may be.
    unique: dict[tuple[str, str], Address] = {}
    for part in parts:
        address = parse_address(field, part)
        unique.setdefault((address.username, address.domain.lower()), address)
    return list(unique.values())


def _split_addresses(text: str) -> list[str]:
    # Split on commas outside quotes and angle brackets: '"Doe, J" <j@x>, a@y' is two.
    parts: list[str] = []
    current: list[str] = []
    quoted = angle = escaped = False
    for ch in text:
        if escaped:
            escaped = False  # a quoted pair (the \" in "O\"Neil, J") is text, not a quote
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        if ch == "," and not quoted and not angle:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
