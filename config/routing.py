"""Which channel(s) a notification goes to: routing rules, first match wins.

By default CRITICAL and EMERGENCY page through PagerDuty and everything else is email.
``ROUTING_RULES`` (a JSON list) adds rules in front of that default, for example::

    [{"priority": ["emergency"], "channels": ["pagerduty", "email"],
      "email_to": "oncall@example.com"},
     {"team": ["dba"], "alert_name": "Replica*", "channels": ["pagerduty"]},
     {"alert_name": "DiskFull", "db_instance_id": [42, 43], "channels": ["email"],
      "email_to": ["dba@example.com", "storage@example.com"]},
     {"team": ["marketing"], "channels": ["email"]}]

A rule matches when every field it names matches (``alert_name`` is a shell-style
pattern); empty fields match everything. ``email_to`` (one address, several separated by
commas, or a list) replaces the recipient for the email channel, so a page whose recipient
is a component can also reach a mailbox, and an alert that names no recipient (the GDS
ingest's, looked up by ``alert_name`` and ``db_instance_id``) reaches the people the rule
names.
"""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.addresses import parse_recipients
from worker.channels import Channel
from worker.exceptions import InvalidFieldError
from worker.notification import NotificationPriority


class RoutingRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: list[NotificationPriority] = Field(default_factory=list)
    team: list[str] = Field(default_factory=list)
    alert_name: str | None = None
    db_instance_id: list[int | str] = Field(default_factory=list)
    channels: list[Channel] = Field(min_length=1)
    email_to: str | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        if isinstance(value, list):
            return [v.lower() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("priority", "team", "db_instance_id", mode="before")
    @classmethod
    def _one_or_a_list(cls, value: object) -> object:
        # Runs before _lower (pydantic runs "before" validators last-defined first).
        # `"priority": "critical"` is how people write a rule of one value.
        return [value] if isinstance(value, (str, int)) else value

    @field_validator("email_to", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        if isinstance(value, list) and all(isinstance(a, str) for a in value):
            return ", ".join(value)
        return value

    @field_validator("email_to")
    @classmethod
    def _deliverable(cls, value: str | None) -> str | None:
        # Checked as intake checks a recipient, once at start-up: a rule that could never
        # send mail is a configuration error, not a refusal of every job it routes.
        if value is not None:
            try:
                parse_recipients("email_to", value)
            except InvalidFieldError as exc:
                raise ValueError(f"email_to: {exc.problem}") from None
        return value

    def matches(
        self,
        priority: NotificationPriority,
        team: str | None,
        alert: str | None,
        db_instance_id: int | str | None = None,
    ) -> bool:
        return not self.missed(priority, team, alert, db_instance_id)

    def missed(
        self,
        priority: NotificationPriority,
        team: str | None,
        alert: str | None,
        db_instance_id: int | str | None = None,
    ) -> list[str]:
        """The fields of this rule a notification with these values does not match."""
        missed = []
        if self.priority and priority not in self.priority:
            missed.append("priority")
        if self.db_instance_id and not _same_instance(db_instance_id, self.db_instance_id):
            missed.append("db_instance_id")
        if self.team and (team is None or team.lower() not in {t.lower() for t in self.team}):
            missed.append("team")
        if self.alert_name is not None and (
            alert is None or not fnmatch.fnmatchcase(alert, self.alert_name)
        ):
            missed.append("alert_name")
        return missed


def why_not(
    rules: list[RoutingRule],
    priority: NotificationPriority,
    team: str | None,
    alert: str | None,
    db_instance_id: int | str | None,
) -> str | None:
    """Why no rule that names recipients (``email_to``) for ``alert`` matched, when one
    names it: what a sender of that alert most likely expected to reach (a typo in the
    instance, another team), or None."""
    sent = {"priority": priority.value, "db_instance_id": db_instance_id, "team": team}
    for rule in rules:
        if rule.email_to is None or rule.alert_name is None:
            continue
        missed = rule.missed(priority, team, alert, db_instance_id)
        if missed and "alert_name" not in missed:
            named = {"priority": [p.value for p in rule.priority]}
            parts = [
                f"{field} {sent[field]!r} is not one of {named.get(field, getattr(rule, field))}"
                for field in missed
            ]
            return f"the routing rule for alert {rule.alert_name!r} did not match: " + ", ".join(
                parts
            )
    return None


DEFAULT_RULES = [
    RoutingRule(
        priority=[NotificationPriority.CRITICAL, NotificationPriority.EMERGENCY],
        channels=[Channel.PAGERDUTY],
    ),
    RoutingRule(channels=[Channel.EMAIL]),
]


def _same_instance(value: int | str | None, wanted: list[int | str]) -> bool:
    return value is not None and str(value) in {str(w) for w in wanted}


def route(
    rules: list[RoutingRule],
    priority: NotificationPriority,
    team: str | None,
    alert_name: str | None,
    db_instance_id: int | str | None = None,
) -> RoutingRule:
    """The first rule (configured, then default) that matches."""
    for rule in [*rules, *DEFAULT_RULES]:
        if rule.matches(priority, team, alert_name, db_instance_id):
            return rule
    raise AssertionError("the default rules match everything")  # pragma: no cover
