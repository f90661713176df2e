"""The email writer's direct way: what ``prepare()`` writes straight to bytes is, byte for
byte, what the standard library writes for the same notification (as aiosmtplib sends it
to a server with 8BITMIME), and plain alert mail does take that way; a bare address reads
the same without the standard library's address parser. Hostile input (the strategies of
tests/test_hostile_properties.py) gets the same answer, or the same refusal, both ways."""

from __future__ import annotations

import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Any

import pytest
from aiosmtplib.email import flatten_message
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tests.test_hostile_properties import notifications as hostile_notifications
from worker.addresses import _parsed, parse_address, parse_recipients
from worker.exceptions import InvalidFieldError
from worker.providers.base import Notification
from worker.providers.smtp_message import Prepared, build_message, prepare

NOW = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
SENDERS = ["alerts@example.com", "GDS Alerts <alerts@example.com>", "Ålerts Æ <a@example.com>"]


def outcome(call: Any, *args: Any) -> tuple[Any, str | None]:
    # Any exception, not only a refusal: a crash on one side must show as a disagreement.
    try:
        return call(*args), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def flat(message: EmailMessage) -> bytes:
    """The message's bytes, its multipart boundary (random, chosen as it is written)
    replaced by a constant."""
    return re.sub(rb"={15}\d+==", b"BOUNDARY", flatten_message(message))


def agree(n: Notification, sender: str) -> Prepared | None:
    """Assert that prepare() and the standard library's builder agree on ``n``; return
    what prepare() made (None when both refused it, with the same error)."""
    prepared, refused = outcome(prepare, n, sender, NOW)
    built, refused_too = outcome(build_message, n, sender, NOW)
    assert refused == refused_too
    if refused:
        assert refused.startswith("InvalidFieldError"), refused
        return None
    message, from_addr, recipients = built
    assert prepared.sender == from_addr
    assert prepared.recipients == recipients
    assert prepared.message_id == message["Message-ID"]
    if prepared.data is None:
        assert prepared.message is not None
        assert flat(prepared.message) == flat(message)
    else:
        # Exactly what aiosmtplib's send_message writes for this message to a server with
        # 8BITMIME (ASCII addresses: the SMTP policy, not SMTPUTF8).
        assert prepared.data == flatten_message(message, utf8=False, cte_type="8bit")
        body = n.body or ""
        assert prepared.eight_bit == (not body.isascii())
    assert isinstance(prepared, Prepared)
    return prepared


atext = st.sampled_from("abcxyzABC0189!#$%&'*+/=?^_`{|}~-")
atoms = st.text(atext, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
labels = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
plain_domains = st.lists(labels, min_size=1, max_size=3).map(".".join)
bare_addresses = st.builds(lambda lp, d: f"{lp}@{d}", dot_atoms, plain_domains)
#: Quoted local parts ('"a b"@x', '".a"@x', '"a\\"b"@x'): valid RFC 5322, rarely seen.
quoted_addresses = st.builds(
    lambda lp, d: '"' + lp.replace("\\", "\\\\").replace('"', '\\"') + f'"@{d}',
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=8),
    plain_domains,
)
words = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=8),
)
one_liners = st.lists(words, min_size=1, max_size=16).map(" ".join)
bodies = st.lists(
    st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90),
        st.text(st.characters(codec="utf-8"), max_size=40),
    ),
    max_size=8,
).map("\n".join)


def valid(fields: dict[str, Any]) -> Notification | None:
    try:
        return Notification.model_validate(fields)
    except ValueError:
        return None


alert_mail = (
    st.fixed_dictionaries(
        {
            "recipient": st.lists(bare_addresses, min_size=1, max_size=6).map(", ".join),
            "subject": one_liners,
            "body": bodies,
            "priority": st.sampled_from(["low", "normal", "high", "critical", "emergency"]),
        },
        optional={
            "alert_name": one_liners,
            "idempotency_id": st.from_regex(r"\A[A-Za-z0-9:._-]{1,60}\Z"),
        },
    )
    .map(valid)
    .filter(lambda n: n is not None)
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(alert_mail, st.sampled_from(SENDERS))
def test_alert_mail_written_directly_is_what_the_standard_library_writes(
    n: Notification, sender: str
) -> None:
    prepared = agree(n, sender)
    assume(prepared is not None)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(hostile_notifications, st.sampled_from(SENDERS))
def test_hostile_mail_gets_the_same_message_or_the_same_refusal_both_ways(
    n: Notification, sender: str
) -> None:
    agree(n, sender)


def mail(**fields: Any) -> Notification:
    values = {"recipient": "oncall@example.com", "subject": "Replica lag on db-2"} | fields
    return Notification.model_validate(values)


@pytest.mark.parametrize(
    ("n", "eight_bit"),
    [
        (mail(body="All databases within limits.\n" * 20, idempotency_id="k-1"), False),
        (mail(subject="Réplica retardée — 数据库 🚨", alert_name="Ünïcode"), False),
        (mail(subject="Disk " + "nearly full on every replica " * 6), False),
        (mail(recipient="a@example.com, b@example.org, c.d+ops@example.net"), False),
        (mail(body="Ça dépasse 45 s. Проверьте репликацию."), True),
        (mail(body="", priority="emergency"), False),
    ],
)
def test_plain_alert_mail_is_written_directly(n: Notification, eight_bit: bool) -> None:
    for sender in SENDERS:
        prepared = agree(n, sender)
        assert prepared is not None
        assert prepared.data is not None
        assert prepared.message is None
        assert prepared.eight_bit is eight_bit


@pytest.mark.parametrize(
    "n",
    [
        mail(body_html="<p>lag</p>"),
        mail(recipient="On Call <oncall@example.com>"),
        mail(recipient="Jürgen <ops@example.com>"),
        mail(body="a line longer than any mail line should be " * 3),
    ],
    ids=["html", "display name", "non-ASCII name", "long line"],
)
def test_other_mail_is_built_by_the_standard_library(n: Notification) -> None:
    prepared = agree(n, "alerts@example.com")
    assert prepared is not None
    assert prepared.data is None
    assert prepared.message is not None


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        bare_addresses,
        st.builds(lambda a, pad: pad + a + pad, bare_addresses, st.sampled_from([" ", "\t"])),
        st.builds(lambda a, b: a + b, bare_addresses, st.sampled_from([".", "..", "@x", "-"])),
        st.builds(lambda a: "." + a, bare_addresses),
        st.from_regex(r"\A[a-z.@-]{1,12}\Z"),
    )
)
def test_a_bare_address_reads_the_same_without_the_standard_librarys_parser(text: str) -> None:
    fast, refused = outcome(parse_address, "recipient", text)
    full, refused_too = outcome(_parsed, "recipient", text)
    if refused or refused_too:
        # The same verdict; the reason may be worded by either parser.
        assert bool(refused) == bool(refused_too), (refused, refused_too)
        return
    assert (fast.display_name, fast.username, fast.domain, fast.addr_spec) == (
        full.display_name,
        full.username,
        full.domain,
        full.addr_spec,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            bare_addresses,
            quoted_addresses,
            st.builds(lambda a: f"On Call <{a}>", quoted_addresses),
        ),
        min_size=1,
        max_size=4,
    ).map(", ".join)
)
@example('".a"@example.com')
@example('"a."@example.com, ops@example.com')
@example('"a b"@example.com')
def test_an_accepted_address_is_written_back_as_itself(recipient: str) -> None:
    n = valid({"recipient": recipient, "subject": "Replica lag"})
    assume(n is not None)
    assert n is not None
    prepared = agree(n, "alerts@example.com")
    if prepared is None:
        # Refused by both ways alike; for one reason only: nothing else here is invalid.
        _, refused = outcome(prepare, n, "alerts@example.com", NOW)
        assert refused is not None
        assert "cannot be written back" in refused, refused
        return
    data = prepared.data
    if data is None:
        assert prepared.message is not None
        data = flatten_message(prepared.message, utf8=False, cte_type="8bit")
    to = BytesHeaderParser(policy=email.policy.default).parsebytes(data)["To"]
    # Read strictly, as a mail client's parser does: no defect, the same addresses.
    assert not to.defects, to.defects
    assert [a.addr_spec for a in to.addresses] == [r.addr_spec for r in prepared.recipients]


@pytest.mark.parametrize(
    ("recipient", "addresses"),
    [
        ('"O\\"Neil, J" <j@example.com>, ops@example.com', ["j@example.com", "ops@example.com"]),
        ('"a\\"b"@example.com, ops@example.com', ['"a\\"b"@example.com', "ops@example.com"]),
        ('"a\\",b"@example.com', ['"a\\",b"@example.com']),
    ],
)
def test_an_escaped_quote_does_not_end_a_quoted_string(
    recipient: str, addresses: list[str]
) -> None:
    parsed = parse_recipients("recipient", recipient)
    assert [a.addr_spec for a in parsed] == addresses


@pytest.mark.parametrize("recipient", ['"a b"@example.com', '"a\\"b"@example.com'])
def test_a_quoted_local_part_is_built_by_the_standard_library(recipient: str) -> None:
    prepared = agree(mail(recipient=recipient), "alerts@example.com")
    assert prepared is not None
    assert prepared.data is None
    assert prepared.message is not None


def test_a_quoted_local_part_that_cannot_be_written_back_is_refused_at_the_door() -> None:
    with pytest.raises(InvalidFieldError) as refused:
        parse_address("recipient", '".a"@example.com')
    assert refused.value.field == "recipient"
    assert "quoted local part" in str(refused.value)
    assert parse_address("recipient", '"a b"@example.com').addr_spec == '"a b"@example.com'


def test_a_subject_of_a_megabyte_is_cut_as_pagerduty_cuts_a_summary() -> None:
    """The standard library folds a header in time that grows with its square: a subject
    of a megabyte took 16 s of a worker's CPU at every attempt, and then the attempt's
    budget dead-lettered it, blaming the server it never reached."""
    n = mail(subject="word " * 200_000, recipient="Jürgen <ops@example.com>")
    prepared = prepare(n, "alerts@example.com")
    assert prepared.message is not None  # the standard library's build, the slow one
    subject = str(prepared.message["Subject"])
    assert len(subject) == 1024
    assert subject.startswith("word word")
    assert subject.endswith("…")
