"""Every setting the service reads, in one place, from the environment (and ``.env``).

Use :func:`get_settings` everywhere; it validates once and caches. A bad value fails here,
at start, with :class:`worker.exceptions.NotificationConfigError` naming the environment
variable and what it allows. Secret values are ``SecretStr`` and are never echoed, not even
in the error that rejects them.

Per-team PagerDuty routing keys come from ``PAGERDUTY_ROUTING_KEY_<TEAM>`` variables, one per
team (``PAGERDUTY_ROUTING_KEY_DBA``, ``PAGERDUTY_ROUTING_KEY_PLATFORM_CORE``), so each key can
be injected from a secret store on its own. Team names match case-insensitively, with ``-``
and ``_`` the same.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from limits import parse
from pydantic import (
    AfterValidator,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from config.api_tokens import ApiToken, load_tokens
from config.dev_stack_file import stack_environment
from config.redis_address import RedisAddress, parse_redis_url
from config.routing import RoutingRule
from worker.addresses import parse_address
from worker.exceptions import InvalidFieldError, NotificationConfigError
from worker.notification import PagerDutySeverity
from worker.validation import path, problem

#: PagerDuty's Events API v2 (US region); EU accounts use events.eu.pagerduty.com.
DEFAULT_API_URL = "https://events.pagerduty.com/v2/enqueue"
TEAM_KEY_PREFIX = "PAGERDUTY_ROUTING_KEY_"
_ROUTING_KEY_RE = re.compile(r"^[A-Za-z0-9]{32}$")
_SECRET_FIELDS = {
    "redis_url",  # may hold a password
    "redis_sentinel_password",
    "pagerduty_routing_key",
    "pagerduty_team_routing_keys",
    "smtp_password",
    "watchdog_url",
    "watchdog_fail_url",
}


def normalize_team(team: str) -> str:
    """The canonical form of a team name: lower case, ``-`` written as ``_``."""
    return team.strip().lower().replace("-", "_")


def _check_routing_key(value: SecretStr) -> SecretStr:
    if not _ROUTING_KEY_RE.match(value.get_secret_value()):
        raise ValueError("must be a PagerDuty Events API v2 integration key: 32 letters and digits")
    return value


RoutingKey = Annotated[SecretStr, AfterValidator(_check_routing_key)]


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class _TeamRoutingKeysSource(PydanticBaseSettingsSource):
    """Collects ``PAGERDUTY_ROUTING_KEY_<TEAM>`` variables into ``pagerduty_team_routing_keys``:
    from the ``.env`` file and the environment (which wins), as every other setting. One
    left blank is not set."""

    def __init__(
        self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self.dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        from_file = self.dotenv.env_vars if isinstance(self.dotenv, DotEnvSettingsSource) else {}
        keys: dict[str, Any] = {}
        for variables in (from_file, os.environ):
            for name, value in variables.items():
                team = name[len(TEAM_KEY_PREFIX) :]
                if name.upper().startswith(TEAM_KEY_PREFIX) and team:
                    if value is None or not value.strip():
                        keys.pop(normalize_team(team), None)
                    else:
                        keys[normalize_team(team)] = value
        return {"pagerduty_team_routing_keys": keys} if keys else {}


class _DevStackSource(EnvSettingsSource):
    """A ``gds-notify dev`` stack running in this checkout: its settings, under the
    environment's and over a ``.env`` file's (config/dev_stack_file.py)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in stack_environment().items()}


class Settings(BaseSettings):
    """The service's configuration. Field ``foo_bar`` is environment variable ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )
    _tokens: list[ApiToken] = PrivateAttr(default_factory=list)

    pagerduty_routing_key: RoutingKey | None = Field(
        default=None, description="Default Events API v2 integration key (secret)."
    )
    pagerduty_team_routing_keys: dict[str, RoutingKey] = Field(
        default_factory=dict,
        description="Per-team keys, from PAGERDUTY_ROUTING_KEY_<TEAM> variables (secret).",
    )
    pagerduty_api_url: Annotated[str, AfterValidator(_check_http_url)] = Field(
        default=DEFAULT_API_URL, description="Events API v2 enqueue URL."
    )
    pagerduty_timeout: float = Field(
        default=30.0, gt=0, le=300, description="Seconds to wait for PagerDuty's answer."
    )
    pagerduty_default_severity: PagerDutySeverity = Field(
        default=PagerDutySeverity.ERROR,
        description="Severity for events whose priority maps to none.",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Broker and state store: one server, or Sentinels and a master's name "
        "(config/redis_address.py).",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, description="The Sentinels' own password, when they require one (secret)."
    )
    redis_min_replicas: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Replicas that must hold a job (and a delivered record) before it is "
        "acknowledged (WAIT); 0 trusts the master alone.",
    )
    redis_wait_timeout: float = Field(
        # At least 10 ms: WAIT's timeout is in milliseconds, and 0 would wait for ever.
        default=2.0,
        ge=0.01,
        le=60,
        description="Seconds to wait for those replicas.",
    )
    redis_retry_seconds: float | None = Field(
        default=None,
        ge=0,
        le=300,
        description="How long an operation is retried while Redis is unreachable or a "
        "failover elects a new master, before it fails (default: 20 with Sentinel, 0 for "
        "one server).",
    )

    smtp_host: str = Field(default="localhost", min_length=1, description="SMTP server host.")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP server port.")
    smtp_username: str | None = Field(default=None, description="SMTP AUTH user.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP AUTH password.")
    smtp_from: str = Field(
        default="gds-notification@localhost", description="Sender address (From)."
    )
    smtp_starttls: bool | None = Field(
        default=None, description="STARTTLS: true (required), false (never), auto (if offered)."
    )
    smtp_use_tls: bool = Field(default=False, description="Implicit TLS from the first byte.")
    smtp_timeout: float = Field(default=30.0, gt=0, le=300, description="Seconds per reply.")
    smtp_data_timeout: float = Field(
        default=300.0,
        gt=0,
        le=600,
        description="Seconds for the reply to a message (RFC 5321 allows ten minutes): a "
        "message the server took but answered later than this is sent again.",
    )
    smtp_validate_certs: bool = Field(default=True, description="Verify the server's certificate.")
    smtp_ca_file: FilePath | None = Field(
        default=None, description="CA bundle to trust instead of the system's."
    )

    celery_visibility_timeout: int = Field(
        default=3600,
        ge=5,
        le=43_200,
        description="Seconds before Redis hands an unacknowledged job to another worker.",
    )
    retry_base_seconds: float = Field(default=1.0, gt=0, le=3600, description="First backoff.")
    retry_cap_seconds: float = Field(default=300.0, gt=0, description="Longest single backoff.")
    # High enough that, with the default backoff, the deadline ends a transient outage
    # rather than the count: ten attempts are spent in about four minutes, and a page
    # dead-lettered while PagerDuty is down for five would wait for a person to replay it.
    retry_max_attempts: int = Field(
        default=50, ge=1, le=1000, description="Attempts per job and channel."
    )
    retry_deadline_seconds: float = Field(
        default=3600.0, gt=0, description="Give up (dead-letter) this long after enqueue."
    )
    idempotency_ttl_seconds: int = Field(
        default=86_400, ge=1, description="How long an idempotency id is remembered."
    )
    job_ttl_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long job history is kept."
    )
    job_stall_seconds: float = Field(
        default=300.0,
        ge=5,
        le=86_400,
        description="A delivery with no progress this long is re-queued by the recovery sweep.",
    )
    job_recovery_interval: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds between recovery sweeps (beat)."
    )
    pagerduty_rate_limit: str = Field(
        default="120/minute", description="Events per routing key, shared by every worker."
    )
    routing_rules: list[RoutingRule] = Field(
        default_factory=list, description="JSON list of routing rules, first match wins."
    )
    heartbeat_services_file: FilePath | None = Field(
        default=None, description="TOML catalogue of services that send heartbeats."
    )
    heartbeat_check_interval: float = Field(
        default=15.0, gt=0, le=3600, description="Seconds between heartbeat checks (beat)."
    )

    watchdog_url: SecretStr | None = Field(
        default=None,
        description="Called (GET) each time the watchdog canary comes through the whole "
        "pipeline: an external dead man's switch (Healthchecks, Dead Man's Snitch, Cronitor). "
        "Secret: such a URL is its own credential.",
    )
    watchdog_fail_url: SecretStr | None = Field(
        default=None,
        description="Called instead when the canary comes through but the service sees itself "
        "failing (dead letters growing); for Healthchecks, the ping URL plus /fail.",
    )
    watchdog_interval: float = Field(
        default=60.0, ge=1, le=3600, description="Seconds between watchdog canaries (beat)."
    )
    watchdog_late_page_seconds: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="A page undelivered this long after it was accepted makes the canary "
        "call WATCHDOG_FAIL_URL.",
    )

    api_tokens: str | None = Field(
        default=None, description="JSON list of API tokens: name, sha256 of the secret, scopes."
    )
    api_tokens_file: FilePath | None = Field(
        default=None, description="A file holding the same JSON list of API tokens."
    )
    api_rate_limit: str = Field(
        default="3000/minute", description="Requests per API token, shared by every API process."
    )
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=64 * 1_048_576, description="Largest request body."
    )
    api_max_alertmanager_body_bytes: int = Field(
        default=16 * 1_048_576,
        ge=1024,
        le=256 * 1_048_576,
        description="Largest Alertmanager webhook body (a whole group; a 413 is not retried).",
    )
    api_read_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds a client may take to send its body."
    )
    api_docs: bool = Field(default=True, description="Serve /docs and /openapi.json.")
    ping_rate_limit: str = Field(
        default="6000/minute", description="Pings per ping key, shared by every API process."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text (for people) or json (one object per line, for log pipelines).",
    )

    @field_validator("pagerduty_rate_limit", "api_rate_limit", "ping_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            rate = parse(value)
        except ValueError:
            raise ValueError(
                "must be a rate such as '120/minute', '10/second' or '2000/hour'"
            ) from None
        if rate.amount < 1:
            # A window of none would hold every page (or refuse every call) for ever.
            raise ValueError("must allow at least one per period, such as '1/hour'")
        return value

    @field_validator(
        "pagerduty_routing_key",
        "redis_sentinel_password",
        "redis_retry_seconds",
        "smtp_username",
        "smtp_password",
        "smtp_ca_file",
        "heartbeat_services_file",
        "watchdog_url",
        "watchdog_fail_url",
        "api_tokens",
        "api_tokens_file",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # A template's `SMTP_USERNAME=` (as .env.example writes it) means "not set": read as
        # an empty login, every email failed on a relay that takes none.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_name(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("smtp_starttls", mode="before")
    @classmethod
    def _auto_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

    @field_validator("smtp_from")
    @classmethod
    def _sender_address(cls, value: str) -> str:
        try:
            return str(parse_address("SMTP_FROM", value))
        except InvalidFieldError as exc:
            raise ValueError(exc.problem) from None

    @model_validator(mode="after")
    def _smtp_consistent(self) -> Settings:
        if self.smtp_use_tls and self.smtp_starttls:
            raise ValueError(
                "SMTP_USE_TLS and SMTP_STARTTLS cannot both be true: implicit TLS (port 465) "
                "or STARTTLS (port 587), not both"
            )
        if bool(self.smtp_username) != bool(self.smtp_password):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
        if self.retry_cap_seconds >= self.celery_visibility_timeout * 0.9:
            raise ValueError(
                f"RETRY_CAP_SECONDS ({self.retry_cap_seconds:g}) must stay below 90% of "
                f"CELERY_VISIBILITY_TIMEOUT ({self.celery_visibility_timeout}): a longer "
                "delay makes Redis deliver the job twice"
            )
        if self.retry_base_seconds > self.retry_cap_seconds:
            raise ValueError("RETRY_BASE_SECONDS must not exceed RETRY_CAP_SECONDS")
        try:
            self._tokens = load_tokens(self.api_tokens, self.api_tokens_file)
        except NotificationConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def smtp_data_wait(self) -> float:
        """How long the replies to DATA and to the message may take: never less than any
        other reply."""
        return max(self.smtp_data_timeout, self.smtp_timeout)

    @property
    def tokens(self) -> list[ApiToken]:
        """The API tokens from ``API_TOKENS`` and ``API_TOKENS_FILE``, validated at start."""
        return self._tokens

    @property
    def max_delay_seconds(self) -> float:
        """The longest any retry or deferral may wait: under the visibility timeout."""
        return min(self.retry_cap_seconds, self.celery_visibility_timeout * 0.9)

    @field_validator("watchdog_url", "watchdog_fail_url")
    @classmethod
    def _watchdog_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        parse_redis_url(value)
        return value

    @property
    def redis_address(self) -> RedisAddress:
        """``REDIS_URL`` parsed (it was validated when the settings were read)."""
        return parse_redis_url(self.redis_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _TeamRoutingKeysSource(settings_cls, dotenv_settings),
            _DevStackSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    def routing_key_name(self, team: str | None) -> str:
        """The variable whose key pages for ``team``: its own, else the default."""
        if team and normalize_team(team) in self.pagerduty_team_routing_keys:
            return f"{TEAM_KEY_PREFIX}{normalize_team(team).upper()}"
        return "PAGERDUTY_ROUTING_KEY"

    def routing_key_for(self, team: str | None) -> SecretStr:
        """The routing key for ``team``, else the default key.

        Raises :class:`NotificationConfigError` when neither is configured.
        """
        if team:
            key = self.pagerduty_team_routing_keys.get(normalize_team(team))
            if key is not None:
                return key
        if self.pagerduty_routing_key is None:
            who = ""
            if team:
                who = f"team {team!r} has no {TEAM_KEY_PREFIX}{normalize_team(team).upper()} and "
            raise NotificationConfigError(
                who + "PAGERDUTY_ROUTING_KEY is not set: no PagerDuty routing key to use"
            )
        return self.pagerduty_routing_key


def _variable_name(loc: tuple[int | str, ...]) -> str:
    """The variable, and where in its value (``ROUTING_RULES: 1.channels``): a list of
    rules is a long line to search for a misspelt key."""
    if loc and loc[0] == "pagerduty_team_routing_keys" and len(loc) > 1:
        return f"{TEAM_KEY_PREFIX}{str(loc[1]).upper()}"
    if len(loc) > 1:
        return f"{str(loc[0]).upper()}: {path(loc[1:])}"
    return str(loc[0]).upper() if loc else "settings"


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad variable, naming it and what it allows; secret values are not shown."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = problem(item)
        if not loc:  # a rule across several variables; its message names them
            lines.append(message)
            continue
        if loc[0] not in _SECRET_FIELDS and "input" in item:
            given = item["input"]
            if isinstance(given, str) and "@" in given:
                # A URL may carry a proxy's user and password: shown without them, however
                # malformed the URL is.
                given = "…@" + given.rsplit("@", 1)[1]
            message += f" (got {given!r})"
        lines.append(f"{_variable_name(loc)}: {message}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings now; raise a clear error naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise NotificationConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        # A list or mapping variable (ROUTING_RULES, ...) that is not JSON: pydantic-settings
        # fails before validation, with the field's name in its message.
        field = re.search(r'field "(\w+)"', str(exc))
        name = field.group(1).upper() if field else "settings"
        why = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise NotificationConfigError(f"invalid configuration: {name}: must be JSON{why}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, validated on first use (``get_settings.cache_clear()`` resets)."""
    return load_settings()


__all__ = [
    "DEFAULT_API_URL",
    "TEAM_KEY_PREFIX",
    "Settings",
    "describe_validation_error",
    "get_settings",
    "load_settings",
    "normalize_team",
]
