"""The sandbox's SMTP sink, driven with the standard library's smtplib (a client we did
not write): what it keeps, how it shows it, AUTH and STARTTLS, and its faults."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
import trustme

from sandbox import SandboxServer
from tests.conftest import SMTP_PASSWORD, SMTP_USER, SandboxClient, client_tls

NO_LOGINS = {"tls": 0, "clear": 0}


def client(server: SandboxServer, ca: trustme.CA | None = None) -> smtplib.SMTP:
    assert server.smtp_port is not None
    smtp = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=5)
    if ca is not None:
        smtp.starttls(context=client_tls(ca))
        smtp.login(SMTP_USER, SMTP_PASSWORD)
    return smtp


def message(subject: str = "Hello", to: str = "ops@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    msg.set_content("plain body")
    msg.add_alternative("<p>html <b>body</b></p>", subtype="html")
    return msg


@pytest.fixture
def open_sink() -> Iterator[SandboxServer]:
    """A sink with no TLS and no AUTH, as `gds-notify sandbox` starts by default."""
    with SandboxServer(smtp_port=0) as server:
        yield server


@pytest.fixture
def open_api(open_sink: SandboxServer) -> Iterator[SandboxClient]:
    api = SandboxClient(open_sink)
    yield api
    api.close()


def test_messages_are_kept_with_headers_text_and_html(
    mail_sandbox: SandboxServer, mail_api: SandboxClient, ca: trustme.CA
) -> None:
    with client(mail_sandbox, ca) as smtp:
        smtp.send_message(message())
    [kept] = mail_api.messages()
    assert kept["subject"] == "Hello"
    assert kept["text"] == "plain body\n"
    assert kept["html"] == "<p>html <b>body</b></p>\n"
    assert ["To", "ops@example.com"] in kept["headers"]
    assert kept["message_id"] == "<Hello@example.com>"
    assert (kept["tls"], kept["authenticated_as"]) == (True, SMTP_USER)
    assert kept["mail_from"] == "app@example.com"
    assert kept["rcpt_tos"] == ["ops@example.com"]


def test_auth_and_starttls_are_enforced(mail_sandbox: SandboxServer, ca: trustme.CA) -> None:
    with client(mail_sandbox) as plain, pytest.raises(smtplib.SMTPSenderRefused) as caught:
        plain.send_message(message())
    assert caught.value.smtp_code == 530  # STARTTLS first
    with client(mail_sandbox) as smtp:
        smtp.starttls(context=client_tls(ca))
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            smtp.login(SMTP_USER, "wrong")
        assert bad.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPSenderRefused) as unauthenticated:
            smtp.send_message(message())
        assert unauthenticated.value.smtp_code == 530


def test_filters_by_recipient_and_message_id(
    open_sink: SandboxServer, open_api: SandboxClient
) -> None:
    with client(open_sink) as smtp:
        smtp.send_message(message("one", "a@example.com"))
        smtp.send_message(message("two", "b@example.com"))
    assert [m["subject"] for m in open_api.messages(to="b@example.com")] == ["two"]
    assert [m["subject"] for m in open_api.messages(message_id="<one@example.com>")] == ["one"]


def test_page_shows_mail_escaped(open_sink: SandboxServer, open_api: SandboxClient) -> None:
    with client(open_sink) as smtp:
        smtp.send_message(message("Disk <full> & more"))
    page = open_api.http.get("/").text
    assert "<h2>Mail</h2>" in page
    assert "Disk &lt;full&gt; &amp; more" in page
    assert "1 message ·" in page


def test_counts_connections_and_reset_forgets(
    open_sink: SandboxServer, open_api: SandboxClient
) -> None:
    with client(open_sink) as smtp:
        smtp.send_message(message("a"))
        smtp.send_message(message("b"))
    with client(open_sink) as smtp:
        smtp.send_message(message("c"))
    assert open_api.smtp_stats() == {"connections": 2, "messages": 3, "logins": NO_LOGINS}
    assert [m["connection"] for m in open_api.messages()] == [1, 1, 2]
    open_api.http.post("/sandbox/smtp/refuse", json={"recipients": {"x@example.com": 550}})
    open_api.smtp_faults({"status": 451})
    open_api.http.post("/sandbox/reset").raise_for_status()
    assert open_api.smtp_stats() == {"connections": 0, "messages": 0, "logins": NO_LOGINS}
    with client(open_sink) as smtp:
        smtp.send_message(message("after reset", "x@example.com"))  # no fault, no refusal
    assert len(open_api.messages()) == 1


def test_scripted_faults_per_message(open_sink: SandboxServer, open_api: SandboxClient) -> None:
    open_api.smtp_faults({"status": 450}, {}, {"status": 554, "body": "5.7.1 spam"})
    with client(open_sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as first:
            smtp.send_message(message("1"))
        assert first.value.smtp_code == 450
        smtp.send_message(message("2"))
        with pytest.raises(smtplib.SMTPDataError) as third:
            smtp.send_message(message("3"))
        assert (third.value.smtp_code, third.value.smtp_error) == (554, b"5.7.1 spam")
    assert [m["subject"] for m in open_api.messages()] == ["2"]
    assert open_api.http.get("/sandbox/smtp/faults").json()["injected"] == 2


def test_421_closes_the_connection(open_sink: SandboxServer, open_api: SandboxClient) -> None:
    open_api.smtp_faults({"status": 421})
    with client(open_sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            smtp.send_message(message())
        assert caught.value.smtp_code == 421
        time.sleep(0.2)  # the hang-up lands a moment after the reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()


def test_drop_cuts_the_connection_without_a_reply(
    open_sink: SandboxServer, open_api: SandboxClient
) -> None:
    open_api.smtp_faults({"drop": True})
    with (
        client(open_sink) as smtp,
        pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)),
    ):
        smtp.send_message(message())
    assert open_api.messages() == []


def test_drop_with_accept_keeps_the_message_and_loses_only_the_reply(
    open_sink: SandboxServer, open_api: SandboxClient
) -> None:
    open_api.smtp_faults({"drop": True, "accept": True})
    with (
        client(open_sink) as smtp,
        pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)),
    ):
        smtp.send_message(message("taken"))
    assert [m["subject"] for m in open_api.messages()] == ["taken"]


def test_refused_recipients_at_rcpt(open_sink: SandboxServer, open_api: SandboxClient) -> None:
    bad = open_api.http.post("/sandbox/smtp/refuse", json={"recipients": {"x@example.com": 200}})
    assert bad.status_code == 400
    open_api.http.post("/sandbox/smtp/refuse", json={"recipients": {"x@example.com": 550}})
    with client(open_sink) as smtp:
        refused = smtp.sendmail("a@example.com", ["x@example.com", "y@example.com"], b"hi")
    assert refused["x@example.com"][0] == 550
    assert open_api.messages()[0]["rcpt_tos"] == ["y@example.com"]


def test_invalid_smtp_fault_plan_is_refused(open_api: SandboxClient) -> None:
    answer = open_api.http.post("/sandbox/smtp/faults", json={"sequence": [{"drop": "often"}]})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid fault plan"
