"""Settings: defaults, per-team keys, and errors that name the variable without echoing
secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from config.settings import get_settings, load_settings
from worker.exceptions import NotificationConfigError
from worker.providers.smtp import SMTPProvider
from worker.redact import mask

ROOT = Path(__file__).resolve().parent.parent
KEY = "A" * 16 + "B" * 16
DBA = "D" * 32
CORE = "C" * 31 + "1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    import os

    for name in list(os.environ):
        if name.startswith(("PAGERDUTY_", "SMTP_", "REDIS_URL", "RETRY_", "CELERY_")):
            monkeypatch.delenv(name)


def fails(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NotificationConfigError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults() -> None:
    s = load_settings()
    assert s.pagerduty_api_url == "https://events.pagerduty.com/v2/enqueue"
    assert s.pagerduty_timeout == 30.0
    assert s.pagerduty_default_severity.value == "error"
    assert s.pagerduty_routing_key is None
    assert s.pagerduty_team_routing_keys == {}
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.pagerduty_rate_limit == "120/minute"
    assert s.idempotency_ttl_seconds == 86_400
    # RFC 5321's "DATA Termination: 10 minutes" is what a server may take; five of them
    # before taking an answer for lost, every other reply thirty seconds.
    assert (s.smtp_timeout, s.smtp_data_timeout) == (30.0, 300.0)
    smtp = SMTPProvider.from_settings(s)
    assert (smtp.timeout, smtp.data_timeout) == (30.0, 300.0)


def test_bad_routing_key_is_named_and_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = fails(monkeypatch, PAGERDUTY_ROUTING_KEY="my-secret-but-malformed-key")
    assert "PAGERDUTY_ROUTING_KEY: must be a PagerDuty Events API v2 integration key" in message
    assert "32 letters and digits" in message
    assert "my-secret-but-malformed-key" not in message


def test_a_bad_url_is_shown_without_the_password_it_carries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy's user and password in PAGERDUTY_API_URL, the scheme mistyped: the error
    showed the whole value."""
    url = "htps://prox:ProxySECRETpw@proxy.corp:3128/v2/enqueue"
    message = fails(monkeypatch, PAGERDUTY_API_URL=url)
    assert "PAGERDUTY_API_URL:" in message
    assert "ProxySECRETpw" not in message
    assert "…@proxy.corp:3128/v2/enqueue" in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PAGERDUTY_TIMEOUT": "abc"}, "PAGERDUTY_TIMEOUT: Input should be a valid number"),
        ({"PAGERDUTY_TIMEOUT": "0"}, "PAGERDUTY_TIMEOUT: Input should be greater than 0 (got '0')"),
        ({"PAGERDUTY_TIMEOUT": "900"}, "less than or equal to 300"),
        ({"PAGERDUTY_DEFAULT_SEVERITY": "loud"}, "'critical', 'error', 'warning' or 'info'"),
        ({"PAGERDUTY_API_URL": "ftp://x"}, "PAGERDUTY_API_URL: must be an http:// or https://"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL: must be a redis://"),
        ({"PAGERDUTY_RATE_LIMIT": "lots"}, "PAGERDUTY_RATE_LIMIT: must be a rate such as"),
        # A window of none held every page for ever ("redis unavailable" from the script).
        ({"PAGERDUTY_RATE_LIMIT": "0/minute"}, "PAGERDUTY_RATE_LIMIT: must allow at least one"),
        ({"API_RATE_LIMIT": "0/second"}, "API_RATE_LIMIT: must allow at least one"),
        ({"PING_RATE_LIMIT": "0/hour"}, "PING_RATE_LIMIT: must allow at least one"),
        # Not JSON: pydantic-settings' own error (a traceback) before validation.
        (
            {"ROUTING_RULES": "{bad"},
            "invalid configuration: ROUTING_RULES: must be JSON: Expecting property name",
        ),
        ({"RETRY_MAX_ATTEMPTS": "0"}, "RETRY_MAX_ATTEMPTS: Input should be greater than"),
        ({"SMTP_DATA_TIMEOUT": "900"}, "SMTP_DATA_TIMEOUT: Input should be less than or equal"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    assert expected in fails(monkeypatch, **env)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = fails(monkeypatch, PAGERDUTY_TIMEOUT="x", REDIS_URL="http://x", SMTP_PORT="0")
    for name in ("PAGERDUTY_TIMEOUT", "REDIS_URL", "SMTP_PORT"):
        assert name in message


def test_team_keys_one_variable_per_team(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", KEY)
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_DBA", DBA)
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_PLATFORM_CORE", CORE)
    s = load_settings()
    assert s.routing_key_for("dba").get_secret_value() == DBA
    assert s.routing_key_for("DBA").get_secret_value() == DBA
    assert s.routing_key_for("platform-core").get_secret_value() == CORE
    assert s.routing_key_for("web").get_secret_value() == KEY  # no key of its own
    assert s.routing_key_for(None).get_secret_value() == KEY
    for text in (repr(s), str(s), str(s.model_dump())):
        for secret in (KEY, DBA, CORE):
            assert secret not in text


def test_no_key_at_all_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    with pytest.raises(NotificationConfigError) as caught:
        s.routing_key_for("web")
    assert "PAGERDUTY_ROUTING_KEY_WEB" in str(caught.value)
    assert "PAGERDUTY_ROUTING_KEY is not set" in str(caught.value)


def test_bad_team_key_is_named_and_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = fails(monkeypatch, PAGERDUTY_ROUTING_KEY_DBA="short-secret")
    assert "PAGERDUTY_ROUTING_KEY_DBA: must be a PagerDuty" in message
    assert "short-secret" not in message


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PAGERDUTY_TIMEOUT=12\n")
    assert load_settings().pagerduty_timeout == 12


def test_a_running_dev_stack_counts_under_the_environment_and_over_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import os

    from config.dev_stack_file import write_stack

    monkeypatch.setenv("GDS_DEV_DIR", str(tmp_path / "gds-dev"))
    (tmp_path / ".env").write_text("REDIS_URL=redis://production:6379/0\nSMTP_PORT=2525\n")
    stack_env = {"REDIS_URL": "redis://127.0.0.1:41234/0", "API_TOKENS": json.dumps([])}
    write_stack({"pid": os.getpid(), "env": stack_env})
    assert load_settings().redis_url == "redis://127.0.0.1:41234/0"  # over .env
    assert load_settings().smtp_port == 2525  # .env still fills what the stack does not
    monkeypatch.setenv("REDIS_URL", "redis://mine:6379/3")
    assert load_settings().redis_url == "redis://mine:6379/3"  # your own variable wins
    monkeypatch.delenv("REDIS_URL")
    write_stack({"pid": 2**22 + 12345, "env": stack_env})  # a stack that is gone
    assert load_settings().redis_url == "redis://production:6379/0"


def test_get_settings_caches_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    try:
        first = get_settings()
        monkeypatch.setenv("PAGERDUTY_TIMEOUT", "7")
        assert get_settings() is first
        get_settings.cache_clear()
        assert get_settings().pagerduty_timeout == 7
    finally:
        get_settings.cache_clear()


def test_mask() -> None:
    assert mask(None) == "<unset>"
    assert mask("short") == "****"
    assert mask(KEY) == "…BBBB"
    assert mask(SecretStr(DBA)) == "…DDDD"


def test_sentinel_urls_name_the_sentinels_and_the_master() -> None:
    found = load_settings(
        redis_url="redis+sentinel://:s3cret@s1:26380,s2,10.0.0.3:26381/gds-main/2"
    ).redis_address
    assert found.sentinels == (("s1", 26380), ("s2", 26379), ("10.0.0.3", 26381))
    assert (found.master_name, found.db, found.password, found.tls) == (
        "gds-main",
        2,
        "s3cret",
        False,
    )
    assert found.shown() == "redis+sentinel://s1:26380,s2:26379,10.0.0.3:26381/gds-main/2"
    v6 = load_settings(redis_url="redis+sentinel://[::1]:26380,[fd00::3]/gds/0").redis_address
    assert v6.sentinels == (("::1", 26380), ("fd00::3", 26379))
    assert v6.shown() == "redis+sentinel://[::1]:26380,[fd00::3]:26379/gds/0"
    with_password = load_settings(redis_url="rediss://:s3cret@cache.example:6380/4")
    assert with_password.redis_address.shown() == "rediss://…@cache.example:6380/4"
    assert load_settings(redis_url="redis://h:1/0").redis_address.shown() == "redis://h:1/0"
    assert load_settings(redis_url="rediss+sentinel://s1/gds").redis_address.tls


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://:pw@s1:26379;sentinel://s2:26379", "kombu's sentinel://"),
        ("redis+sentinel://s1:26379", "names the Sentinels and the master"),
        ("redis+sentinel://s1:26379/gds/zero", "only a database number"),
        ("redis+sentinel://s1:port/gds", "is not a Sentinel's host:port"),
        ("redis+sentinel://[::1/gds", "write an IPv6 host as [::1]:6379"),
        ("redis+sentinel://[::1]26379/gds", "is not a Sentinel's host:port"),
        ("http://redis:6379", "must be a redis://"),
        # redis-py failed on these with a traceback, at the first connection.
        ("redis://:pw@redis:99999/0", "has a port that is not a number from 1 to 65535"),
        ("rediss://:pw@redis:0/0", "has a port that is not a number from 1 to 65535"),
        ("redis://:pw@redis:port/0", "has a port that is not a number from 1 to 65535"),
        # A password with '/', '?' or '#' not percent-encoded: the host part ends early.
        ("redis://:pw/x@redis:6379/0", "percent-encode a '/', '?' or '#' in the password"),
        ("rediss://:pw?x@redis:6379/0", "percent-encode a '/', '?' or '#' in the password"),
        ("redis+sentinel://:pw#x@s1:26379/gds", "percent-encode a '/', '?' or '#'"),
        ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379", "kombu's sentinel://"),
    ],
)
def test_bad_redis_urls_say_what_a_good_one_looks_like(url: str, says: str) -> None:
    with pytest.raises(NotificationConfigError) as caught:
        load_settings(redis_url=url.replace("pw", "s3cret-pw"))
    assert says in str(caught.value)
    assert "s3cret" not in str(caught.value)  # a URL may hold a password: never echoed


def test_the_env_template_copied_as_it_is_sends_email_with_no_login(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`cp .env.example .env` leaves `SMTP_USERNAME=` and `SMTP_PASSWORD=` blank: that is
    no login (a relay that takes none), not an empty one every email fails on; a blank
    `PAGERDUTY_ROUTING_KEY=` is no key, not a malformed one."""
    from sandbox import SandboxServer
    from worker.notification import Notification

    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    s = load_settings()
    assert (s.smtp_username, s.smtp_password, s.pagerduty_routing_key) == (None, None, None)
    assert s.smtp_host == "smtp.example.com"  # the file was read
    with SandboxServer(smtp_port=0) as sink:
        assert sink.smtp_port is not None
        monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SMTP_PORT", str(sink.smtp_port))
        monkeypatch.setenv("SMTP_STARTTLS", "false")
        smtp = SMTPProvider.from_settings(load_settings())
        try:
            sent = smtp.send(Notification(recipient="you@example.com", subject="Nightly report"))
        finally:
            smtp.close()
        assert sent.status == "sent"
        assert len(sink.mailbox.messages()) == 1


def test_blank_optional_settings_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEARTBEAT_SERVICES_FILE", "WATCHDOG_URL", "API_TOKENS_FILE", "SMTP_CA_FILE"):
        monkeypatch.setenv(name, " ")
    s = load_settings()
    unset = (s.heartbeat_services_file, s.watchdog_url, s.api_tokens_file, s.smtp_ca_file)
    assert unset == (None, None, None, None)


def test_team_keys_are_read_from_the_env_file_too_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A team's key in `.env` was never read (the team paged with the default key) while
    the default key next to it was; blank, as `.env.example` writes them, it is not set."""
    (tmp_path / ".env").write_text(
        f"PAGERDUTY_ROUTING_KEY={KEY}\nPAGERDUTY_ROUTING_KEY_DBA={DBA}\n"
        "PAGERDUTY_ROUTING_KEY_CORE=\nPAGERDUTY_ROUTING_KEY_OPS=\n"
    )
    s = load_settings()
    assert s.routing_key_for("dba").get_secret_value() == DBA
    assert set(s.pagerduty_team_routing_keys) == {"dba"}
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_DBA", CORE)
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_CORE", CORE)
    s = load_settings()
    assert s.routing_key_for("dba").get_secret_value() == CORE
    assert s.routing_key_for("core").get_secret_value() == CORE
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_DBA", "")  # blank in the environment: unset
    assert set(load_settings().pagerduty_team_routing_keys) == {"core"}
