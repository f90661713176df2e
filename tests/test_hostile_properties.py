"""Property-based tests (hypothesis) of hostile input: the intake schema and both builders.

- Intake: any value at all is either a valid job that every later stage can carry (JSON,
  UTF-8, Redis) or an ``InvalidJobError`` whose errors name the field; nothing else.
- PagerDuty builder: any valid notification becomes an event that the sandbox's
  implementation of PagerDuty's rules accepts, within every limit, with no line break in a
  one-line field, or a clear non-retryable refusal.
- Email builder: any valid notification becomes a message whose bytes parse back to the
  same headers, with no header injected, no bare CR or LF, and exactly the recipients
  asked for, or a clear non-retryable refusal naming the field.

These are pure functions, so hundreds of examples cost a second or two.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import worker  # noqa: F401 - import order: the app before tasks (config <-> worker cycle)
from sandbox.validation import validate_alert_event
from tests.conftest import ROUTING_KEY
from worker.addresses import parse_recipients
from worker.exceptions import NotificationDeliveryError
from worker.job_request import InvalidJobError, JobRequest, parse_request
from worker.notification import truncate
from worker.providers.base import Notification
from worker.providers.pagerduty_events import (
    MAX_DEDUP_KEY_CHARS,
    MAX_EVENT_BYTES,
    MAX_SUMMARY_CHARS,
    build_trigger,
    encode_event,
)
from worker.providers.smtp_message import SUBJECT_MAX_CHARS, build_message

FIELDS = [
    "recipient",
    "subject",
    "body",
    "body_html",
    "priority",
    "alert_name",
    "db_instance_id",
    "idempotency_id",
    "metadata",
    "team",
    "channel",
]
#: Everything str.splitlines() or a mail parser might take for the end of a line, and
#: the other usual suspects: NUL, DEL, C1 controls, lone surrogates, RFC 2047 look-alikes.
NASTY = [
    "\r\n",
    "\r",
    "\n",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\t",
    "\ufeff",
    "\ud800",
    "\udfff",
    "Bcc: evil@x.com",
    "\r\nBcc: evil@x.com",
    "\nX-Injected: 1",
    "=?utf-8?q?=0D=0ABcc:_evil@x.com?=",
    ": ",
    ",",
    '"',
    "<",
    ">",
    "@",
    " ",
    "é",
    "日本",
    "🚨",
    "\u202e",
]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)), max_size=12).map(
    "".join
)
any_text = st.one_of(st.text(max_size=40), nasty_text, st.text(min_size=1000, max_size=1200))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), any_text), children, max_size=4),
    ),
    max_leaves=12,
)
field_values = st.one_of(
    any_text,
    json_values,
    st.sampled_from(["critical", "CRITICAL", "low", "email", "pagerduty", "dba", "a@b.com"]),
)
payloads = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=len(FIELDS)),
    st.fixed_dictionaries(
        {"recipient": any_text, "subject": any_text},
        optional={name: field_values for name in FIELDS[2:]},
    ),
)


def attempt(func: Any, *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """``(result, None)``, or ``(None, the exception)``: a property test's two outcomes."""
    try:
        return func(*args, **kwargs), None
    except Exception as exc:  # the caller asserts which exceptions are fine
        return None, exc


def strict_json(value: Any) -> bytes:
    """What Redis and a producer in any language must be able to carry: standard JSON
    (no NaN), UTF-8 (no lone surrogates)."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_intake_accepts_a_carriable_job_or_refuses_naming_the_field(payload: Any) -> None:
    request, exc = attempt(parse_request, payload)
    if isinstance(exc, InvalidJobError):
        assert exc.errors
        for error in exc.errors:
            assert error["field"]
            assert error["message"]
            field = error["field"]
            assert field.split(".")[0] in [*FIELDS, "payload"] or (
                isinstance(payload, dict) and len(error["field"]) <= 200
            ), error
            assert LINE_BREAK_OR_CONTROL.search(field) is None, error  # safe to log
        assert str(exc).startswith("invalid notification: ")
        strict_json(exc.errors)  # the refusal itself can be dead-lettered and printed
        return
    assert exc is None, repr(exc)  # no other exception, ever
    assert isinstance(request, JobRequest)
    wire = strict_json(request.model_dump(mode="json"))
    assert JobRequest.model_validate_json(wire) == request
    request.notification()  # the delivery side's model accepts it too


# -- valid notifications ------------------------------------------------------------------

LINE_BREAK_OR_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")

#: Nasty but legal in a one-line field (the illegal ones are mostly refused: see above).
SAFE_NASTY = [p for p in NASTY if LINE_BREAK_OR_CONTROL.search(p) is None and p < "\ud800"]
SAFE_NASTY += [p for p in NASTY if p[:1] >= "\ue000"]
printable = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))
one_line = st.one_of(
    st.text(printable, min_size=1, max_size=40),
    st.lists(
        st.one_of(st.sampled_from(SAFE_NASTY), st.text(printable, max_size=8)), min_size=1
    ).map("".join),
    st.text(printable, min_size=1025, max_size=1100),
    nasty_text,
)
local_parts = st.from_regex(r"\A[A-Za-z0-9._%+-]{1,20}\Z")
domains = st.one_of(
    st.sampled_from(["example.com", "b.example.org", "xn--bcher-kva.example", "bücher.example"]),
    st.from_regex(r"\A[a-z0-9]{1,10}\.[a-z]{2,6}\Z"),
)
addresses = st.builds(lambda lp, d: f"{lp}@{d}", local_parts, domains)
named_addresses = st.builds(
    lambda name, addr: f'"{name}" <{addr}>' if name else addr,
    st.one_of(one_line, st.none()),
    addresses,
)
recipients = st.one_of(
    addresses,
    named_addresses,
    st.lists(st.one_of(addresses, named_addresses), min_size=1, max_size=4).map(", ".join),
    st.builds(lambda a, t: a + t, addresses, one_line),
)
metadata = st.dictionaries(
    st.one_of(
        st.sampled_from(
            ["source", "component", "class", "group", "team", "dedup_key", "severity", "links"]
        ),
        st.text(max_size=10),
    ),
    json_values,
    max_size=5,
)
notification_fields = st.fixed_dictionaries(
    {"recipient": st.one_of(recipients, one_line), "subject": one_line},
    optional={
        "body": any_text,
        "body_html": any_text,
        "priority": st.sampled_from(["low", "normal", "high", "critical", "emergency"]),
        "alert_name": one_line,
        "db_instance_id": st.one_of(st.integers(), one_line),
        "idempotency_id": one_line,
        "metadata": metadata,
    },
)


def valid_notification(fields: dict[str, Any]) -> Notification | None:
    try:
        return parse_request(fields).notification()
    except InvalidJobError:
        return None


notifications = notification_fields.map(valid_notification).filter(lambda n: n is not None)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(notifications)
def test_pagerduty_builder_makes_events_pagerduty_accepts(n: Notification) -> None:
    event, exc = attempt(build_trigger, n, routing_key=ROUTING_KEY, source="gds_notification")
    if isinstance(exc, NotificationDeliveryError):
        assert exc.retryable is False
        assert str(exc).startswith("notification cannot become a PagerDuty event: metadata.")
        return
    assert exc is None, repr(exc)
    body = encode_event(event)
    assert validate_alert_event(json.loads(body), len(body)) == []
    assert len(body) <= MAX_EVENT_BYTES
    decoded = json.loads(body, parse_constant=_no_constants)  # standard JSON: no NaN
    payload = decoded["payload"]
    # Within the limit however PagerDuty counts a character (in UTF-16 units, the most).
    assert len(payload["summary"].encode("utf-16-le")) // 2 <= MAX_SUMMARY_CHARS
    assert len(decoded["dedup_key"]) <= MAX_DEDUP_KEY_CHARS
    for field in ("summary", "source", "component", "class", "group"):
        if field in payload:
            assert not LINE_BREAK_OR_CONTROL.search(payload[field]), (field, payload[field])
    assert not LINE_BREAK_OR_CONTROL.search(decoded["dedup_key"])
    # Stable: a retry of the same job sends the same dedup_key.
    again = build_trigger(n, routing_key=ROUTING_KEY, source="gds_notification")
    assert again["dedup_key"] == event["dedup_key"]


def _no_constants(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in an event")


EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "x-gds-priority",
    "x-gds-alert-name",
    "x-gds-idempotency-id",
    "importance",
    "x-priority",
    "priority",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
}
HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


#: A display name the standard library's address parser crashes on when reading it back
#: folded (AttributeError inside email.headerregistry), found by this test.
PARSER_CRASH = (
    '0@example.com, "000022233333444000000600000088899999::::::;;;<0000000?'
    "???@@@@0000CC00000EEEEEE00GHHHHHIIIIJJ00LLLMMNOOOPPPPPPP000RRRRRSSSSTT"
    "TT000VVVVWWXXXXX00ZZZ000000---,,+++++***))000'0000%%$$######!!!!!  [[["
    "[[[\\\\\\\\000__________`````aaaabbcddddeeff0000hhijjkkkkklllmmm00000ooooq"
    "qqqrrsstttttuuuvvwwwxxxxxxyyyy00{{{|}}}}}}~~~~~¡¡¢¢££¤¤¤¥¦¦¦¦¦¦§§§§§¨¨"
    '¨¨¨00000ª««««¬¬¬¬¬¬¬¬ĽĽĽĽĽĽľľĿĿ˚ۊ⥶ꇹ" <0@example.com>'
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(notifications)
@example(Notification(recipient=PARSER_CRASH, subject="0"))
def test_email_builder_makes_messages_with_no_injected_header(n: Notification) -> None:
    built, exc = attempt(build_message, n, "GDS Alerts <alerts@example.com>")
    if isinstance(exc, NotificationDeliveryError):
        assert exc.retryable is False
        assert str(exc).split(":")[0] in ("recipient", "subject", "alert_name", "idempotency_id")
        assert "To header" not in str(exc), "a valid address list the builder could not write"
        return
    assert exc is None, repr(exc)
    msg, sender, rcpts = built
    asked = [a.addr_spec for a in parse_recipients("recipient", n.recipient)]
    assert [a.addr_spec for a in rcpts] == asked  # the envelope: RCPT TO exactly these
    # Both forms an SMTP client may send: RFC 2047 encoded, and SMTPUTF8 (which aiosmtplib
    # uses when an address is not ASCII: only that form can carry such an address).
    utf8_needed = any(not a.isascii() for a in [*asked, sender.addr_spec])
    forms = [email.policy.SMTPUTF8] if utf8_needed else [email.policy.SMTP, email.policy.SMTPUTF8]
    for policy in forms:
        raw = msg.as_bytes(policy=policy)
        head, sep, _ = raw.partition(b"\r\n\r\n")
        assert sep
        lines = head.split(b"\r\n")
        for line in lines:
            assert b"\r" not in line, line  # no bare CR
            assert b"\n" not in line, line  # no bare LF
            assert b"\x00" not in line
            assert HEADER_LINE.match(line) or line[:1] in (b" ", b"\t"), line
        names = [line.split(b":")[0].decode().lower() for line in lines if HEADER_LINE.match(line)]
        assert set(names) <= EXPECTED_HEADERS, names
        assert len(names) == len(set(names)), names  # nothing doubled (a second To, Bcc, ...)

        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        assert parsed["Bcc"] is None
        assert parsed["Cc"] is None
        # As sent: cut at SUBJECT_MAX_CHARS (folding a longer one costs its square).
        assert _words(str(parsed["Subject"])) == _words(truncate(n.subject, SUBJECT_MAX_CHARS))
        if n.alert_name:
            assert _words(str(parsed["X-GDS-Alert-Name"])) == _words(n.alert_name)
        assert [addr for _, addr in getaddresses([str(parsed["To"])])] == asked


def _words(text: str) -> str:
    # Folding may turn one run of whitespace into another, and the standard library's RFC
    # 2047 round trip may drop the space between two non-ASCII words; the rest must survive.
    return "".join(text.split())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Disk full\r\nBcc: evil@x.com"),
        ("subject", "Disk full\x85Bcc: evil@x.com"),
        ("subject", "Disk full\u2028Bcc: evil@x.com"),
        ("subject", "Disk full\x0bBcc: evil@x.com"),
        ("subject", "Disk\x00full"),
        ("alert_name", "Alert\nX-Injected: 1"),
        ("recipient", "a@b.com\r\nBcc: evil@x.com"),
        ("recipient", "a@b.com\u2029Bcc: evil@x.com"),
        ("idempotency_id", "id\rBcc: evil@x.com"),
        ("team", "dba\r\nBcc: evil@x.com"),
        ("team", "dba\x1cx"),
    ],
)
def test_line_breaks_of_every_kind_are_refused_naming_the_field(field: str, value: str) -> None:
    payload = {"recipient": "a@b.com", "subject": "s", field: value}
    with pytest.raises(InvalidJobError) as caught:
        parse_request(payload)
    assert [e["field"] for e in caught.value.errors] == [field]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"subject": "s\ud800"}, "subject"),
        ({"body": "lone \udc00 surrogate"}, "body"),
        ({"metadata": {"x": "\ud83d"}}, "metadata"),
        ({"metadata": {"\ud83d": 1}}, "metadata"),
        ({"metadata": {"x": float("nan")}}, "metadata"),
        ({"metadata": {"x": [float("inf")]}}, "metadata"),
        ({"metadata": {"x": 10**5000}}, "metadata"),
        ({"metadata": {"team": "dba\nX-Injected: 1"}}, "metadata"),
    ],
)
def test_values_no_json_peer_could_carry_are_refused(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse_request({"recipient": "a@b.com", "subject": "s"} | payload)
    assert [e["field"].split(".")[0] for e in caught.value.errors] == [field]


def test_deeply_nested_metadata_is_refused_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidJobError) as caught:
        parse_request({"recipient": "a@b.com", "subject": "s", "metadata": {"x": deep}})
    assert caught.value.errors[0]["field"].startswith("metadata")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "=?utf-8?q?=0D=0ABcc:_evil@x.com?="),
        ("subject", "Disk full =?utf-8?b?DQpCY2M6IGV2aWxAeC5jb20=?="),
        ("alert_name", "=?us-ascii?Q?=0AX-Injected:_1?="),
        ("recipient", '"=?utf-8?q?=0D=0ABcc:_evil@x.com?=" <a@example.com>'),
        ("recipient", "=??Q??=@example.com"),
    ],
)
def test_encoded_words_cannot_smuggle_a_header(field: str, value: str) -> None:
    # CVE-2024-6923: the standard library decodes encoded words while refolding a header
    # and (before 3.11.10 / 3.12.5) wrote the decoded CR LF out as a real line break.
    fields: dict[str, Any] = {"recipient": "a@example.com", "subject": "s", field: value}
    n = Notification.model_validate(fields)
    with pytest.raises(NotificationDeliveryError, match=f"^{field}: .*encoded word") as caught:
        build_message(n, "alerts@example.com")
    assert caught.value.retryable is False


def test_an_address_list_the_standard_library_would_fold_wrongly_keeps_every_recipient() -> None:
    # Found by hypothesis: folding encoded the comma after a non-ASCII display name as
    # "=?utf-8?q?=2C?=", so readers saw two recipients where three were sent.
    asked = '000000000@example.com, "0000𐀀" <00000000@example.com>, 0@example.com'
    n = Notification(recipient=asked, subject="s")
    msg, _, rcpts = build_message(n, "alerts@example.com")
    wanted = ["000000000@example.com", "00000000@example.com", "0@example.com"]
    assert [r.addr_spec for r in rcpts] == wanted
    for policy in (email.policy.SMTP, email.policy.SMTPUTF8):
        parsed = email.message_from_bytes(msg.as_bytes(policy=policy), policy=email.policy.default)
        assert [addr for _, addr in getaddresses([str(parsed["To"])])] == wanted
    # Display names stay where the standard library writes them correctly.
    ok, _, _ = build_message(
        Notification(recipient='"Zoë" <z@example.com>', subject="s"), "a@b.com"
    )
    assert str(ok["To"]) == "Zoë <z@example.com>"
