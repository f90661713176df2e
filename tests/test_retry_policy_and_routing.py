"""The retry policy and the routing rules, as pure functions; and routing end to end."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from config.routing import DEFAULT_RULES, RoutingRule, route
from config.settings import load_settings
from worker.channels import Channel
from worker.engine.retry_policy import RetryPolicy
from worker.exceptions import (
    NotificationConfigError,
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationRateLimitError,
    NotificationTimeoutError,
)
from worker.providers.base import NotificationPriority as P

POLICY = RetryPolicy(
    base=1.0, cap=60.0, max_attempts=5, deadline=600.0, max_delay=60.0, hard_cap=3240.0
)


def test_full_jitter_backoff_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)]:
        samples = [POLICY.backoff(attempt, rng) for _ in range(300)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # full jitter spreads over the whole range
        assert min(samples) < 0.2 * ceiling


@pytest.mark.parametrize(
    "error",
    [
        NotificationDeliveryError("400", 400, retryable=False),
        NotificationDeliveryError("smtp 550", 550, retryable=False),
        NotificationConfigError("bad key"),
    ],
)
def test_permanent_errors_dead_letter_at_once(error: Any) -> None:
    decision = POLICY.decide(error, attempt=1, age=0)
    assert not decision.retry
    assert decision.reason.startswith("permanent error")


@pytest.mark.parametrize(
    "error",
    [
        NotificationDeliveryError("503", 503),
        NotificationTimeoutError("slow", 30),
        NotificationConnectionError("refused"),
        NotificationDeliveryError("421", 421, retryable=True),
    ],
)
def test_transient_errors_retry_with_backoff(error: Any) -> None:
    decision = POLICY.decide(error, attempt=3, age=0, rng=random.Random(3))
    assert decision.retry
    assert 0 <= decision.delay <= 4.0


def test_rate_limit_waits_at_least_retry_after_plus_bounded_jitter() -> None:
    rng = random.Random(5)
    for _ in range(200):
        delay = POLICY.decide(NotificationRateLimitError("429", 120.0), 1, 0, rng).delay
        assert 120.0 <= delay <= 120.0 + 12.25  # beyond RETRY_CAP: Retry-After wins
    without = POLICY.decide(NotificationRateLimitError("429", None), 1, 0, rng).delay
    assert without >= POLICY.base


def test_no_delay_ever_reaches_the_visibility_timeout() -> None:
    settings = load_settings(celery_visibility_timeout=100, retry_cap_seconds=80)
    policy = RetryPolicy.from_settings(settings)
    assert policy.hard_cap == 90
    huge = NotificationRateLimitError("429", 10_000.0)
    assert policy.decide(huge, 1, 0).delay <= 90
    assert policy.deferral(10_000) <= 90
    assert all(policy.backoff(50) <= 80 for _ in range(100))


def test_retry_cap_must_stay_below_the_visibility_timeout() -> None:
    from worker.exceptions import NotificationConfigError as ConfigError

    with pytest.raises(ConfigError, match="must stay below 90% of CELERY_VISIBILITY_TIMEOUT"):
        load_settings(celery_visibility_timeout=100, retry_cap_seconds=95)


def test_exhausted_and_deadline() -> None:
    error = NotificationDeliveryError("503", 503)
    exhausted = POLICY.decide(error, attempt=5, age=0)
    assert not exhausted.retry
    assert exhausted.reason.startswith("gave up after 5 attempts")
    late = POLICY.decide(error, attempt=2, age=599.9, rng=random.Random(2))
    assert not late.retry
    assert late.reason.startswith("deadline of 600s passed")


@pytest.mark.parametrize(
    "error",
    [
        NotificationDeliveryError("502", 502),
        NotificationTimeoutError("slow", 10),
        NotificationDeliveryError("421", 421, retryable=True),
        NotificationRateLimitError("429", None),  # PagerDuty usually sends no Retry-After
    ],
)
def test_with_the_defaults_an_outage_is_retried_until_the_deadline_not_the_count(
    error: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("BASE_SECONDS", "CAP_SECONDS", "MAX_ATTEMPTS", "DEADLINE_SECONDS"):
        monkeypatch.delenv(f"RETRY_{name}", raising=False)
    monkeypatch.delenv("CELERY_VISIBILITY_TIMEOUT", raising=False)
    policy = RetryPolicy.from_settings(load_settings())
    for seed in range(300):
        rng, age, attempt = random.Random(seed), 0.0, 0
        while (decision := policy.decide(error, attempt := attempt + 1, age, rng)).retry:
            age += decision.delay
        assert decision.reason.startswith("deadline of 3600s passed"), (seed, decision.reason)
        # The last try fell within one wait of the deadline (a 429's: the backoff's ceiling
        # plus its jitter).
        assert age > 3600 - (policy.max_delay * 1.1 + 0.25), (seed, age)


def test_default_routing_pages_critical_and_emergency_and_mails_the_rest() -> None:
    for priority in P:
        rule = route([], priority, None, None)
        expected = [Channel.PAGERDUTY] if priority.at_least(P.CRITICAL) else [Channel.EMAIL]
        assert rule.channels == expected
    assert DEFAULT_RULES[-1].channels == [Channel.EMAIL]


def test_rules_by_team_alert_name_and_priority_first_match_wins() -> None:
    rules = [
        RoutingRule.model_validate(
            {
                "priority": ["EMERGENCY"],
                "channels": ["pagerduty", "email"],
                "email_to": "oncall@example.com",
            }
        ),
        RoutingRule.model_validate(
            {"team": ["DBA"], "alert_name": "Replica*", "channels": ["pagerduty"]}
        ),
        RoutingRule.model_validate({"team": ["marketing"], "channels": ["email"]}),
    ]
    assert route(rules, P.EMERGENCY, None, None).channels == ["pagerduty", "email"]
    assert route(rules, P.LOW, "dba", "ReplicaLag").channels == ["pagerduty"]
    assert route(rules, P.LOW, "dba", "DiskFull").channels == ["email"]  # default
    assert route(rules, P.CRITICAL, "marketing", None).channels == ["email"]
    assert route(rules, P.CRITICAL, None, "Replica1").channels == ["pagerduty"]  # default


def test_routing_rules_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROUTING_RULES", json.dumps([{"team": ["dba"], "channels": ["pagerduty"]}]))
    assert load_settings().routing_rules[0].team == ["dba"]
    # A rule of one value, written as the value.
    one = {"priority": "Critical", "team": "dba", "db_instance_id": 42, "channels": ["email"]}
    monkeypatch.setenv("ROUTING_RULES", json.dumps([one | {"email_to": "dba@example.com"}]))
    rule = load_settings().routing_rules[0]
    assert (rule.priority, rule.team, rule.db_instance_id) == (["critical"], ["dba"], [42])
    monkeypatch.setenv("ROUTING_RULES", json.dumps([{"team": ["dba"], "channels": ["sms"]}]))
    from worker.exceptions import NotificationConfigError as ConfigError

    with pytest.raises(ConfigError, match=r"ROUTING_RULES: 0\.channels\.0: .*'pagerduty' or"):
        load_settings()
    # A misspelt key in the second rule: named with the rule, not as the whole variable.
    rules = [{"priority": "critical", "channels": ["pagerduty"]}, {"chanels": ["email"]}]
    monkeypatch.setenv("ROUTING_RULES", json.dumps(rules))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "ROUTING_RULES: 1.channels: Field required" in str(caught.value)
    assert "ROUTING_RULES: 1.chanels: Extra inputs are not permitted" in str(caught.value)


@pytest.mark.parametrize(
    ("email_to", "problem"),
    [
        ("oncall@-bad-.example.com", "not a valid email address"),
        (["dba@example.com", "not an address"], "not a valid email address"),
        ('".a"@example.com', "quoted local part"),
        ("", "no email address given"),
    ],
)
def test_a_rule_that_could_never_send_mail_stops_the_settings_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, email_to: object, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    rule = {"priority": ["emergency"], "channels": ["pagerduty", "email"], "email_to": email_to}
    monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
    from worker.exceptions import NotificationConfigError as ConfigError

    with pytest.raises(ConfigError, match=rf"ROUTING_RULES: .*email_to.*{problem}"):
        load_settings()
    rule["email_to"] = ["dba@example.com", '"O\\"Neil, J" <j@example.com>']
    monkeypatch.setenv("ROUTING_RULES", json.dumps([rule]))
    assert load_settings().routing_rules[0].email_to == (
        'dba@example.com, "O\\"Neil, J" <j@example.com>'
    )
