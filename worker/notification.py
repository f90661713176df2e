"""The domain core: a notification, its priorities, and what a provider reports.

``Notification`` is what producers send; ``NotificationResult`` is what a provider returns
when a peer accepted it. Failures are raised as :mod:`worker.exceptions`, never returned,
except where part of a send succeeded (some SMTP recipients refused, others accepted).
This module imports nothing else of ours: every layer above builds on it.

Both models are pydantic models and round-trip through JSON without loss:
``Notification.model_validate_json(n.model_dump_json()) == n``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from worker.exceptions import InvalidJobError
from worker.validation import described, validation_errors

__all__ = [
    "EVENT_IMAGES",
    "EVENT_LINKS",
    "NAME_MAX_CHARS",
    "RECIPIENT_MAX_CHARS",
    "EventImage",
    "EventLink",
    "Notification",
    "NotificationPriority",
    "NotificationResult",
    "NotificationStatus",
    "PagerDutySeverity",
    "content_key",
    "event_links_problem",
    "truncate",
]


class NotificationPriority(enum.StrEnum):
    """How urgent a notification is; by default CRITICAL and above page, the rest email."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        """0 for LOW up to 4 for EMERGENCY, for ``>=`` comparisons."""
        return _PRIORITY_ORDER.index(self)

    def at_least(self, other: NotificationPriority) -> bool:
        return self.rank >= other.rank


_PRIORITY_ORDER = list(NotificationPriority)


class NotificationStatus(enum.StrEnum):
    """Where a notification stands after a provider call."""

    PENDING = "pending"
    SENT = "sent"  # accepted by the peer (PagerDuty 202, SMTP 250)
    DELIVERED = "delivered"  # confirmed at the far end
    FAILED = "failed"
    BOUNCED = "bounced"
    RATE_LIMITED = "rate_limited"
    BLACKOUT = "blackout"  # held back on purpose (maintenance window)


#: Metadata keys that become a PagerDuty event field and so must be one clean line
#: (``team`` stands in for ``group`` when there is none).
ONE_LINE_METADATA_KEYS = frozenset({"source", "component", "class", "group", "team", "dedup_key"})

#: What may not appear in a field that becomes an email header or a one-line PagerDuty
#: field: CR and LF, everything else some reader takes for a line break (VT, FF, the
#: information separators, NEL, U+2028/2029: ``str.splitlines`` and the standard library's
#: email headers do), and the other control characters (NUL, ESC, DEL, C1). TAB is fine.
NOT_ONE_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
#: Lone surrogates: a Python str can hold them (JSON "\ud800" decodes to one) but no UTF-8
#: peer can carry them, Redis and SMTP included.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: Integers beyond 64 bits lose precision in most JSON peers (and past 4300 digits Python
#: itself refuses to print them).
_MAX_INT = 2**63
ONE_LINE_MESSAGE = "must be a single line (no CR or LF, no other line break or control character)"


def is_one_line(value: str) -> bool:
    """True when ``value`` holds no line break of any kind and no control character."""
    return NOT_ONE_LINE.search(value) is None


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "…" when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """``text`` written for people (an alert's summary, often ending in a newline) made fit
    for a one-line field: each line break or control character a space, each run of
    whitespace one space, none at either end."""
    return " ".join(NOT_ONE_LINE.sub(" ", text).split())


def check_unicode(value: str) -> str:
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)")
    return value


def _json_kind(value: Any) -> str:
    """What a value is, in JSON's words where it has them."""
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _json_problem(value: Any, path: str) -> str | None:
    """Why a metadata value could not travel as standard JSON in UTF-8, or None."""
    if isinstance(value, str):
        return f"{path} is not valid Unicode text" if _SURROGATE.search(value) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return f"{path} is an integer beyond 64 bits" if abs(value) >= _MAX_INT else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value} (not valid JSON)"
    if isinstance(value, list):
        for i, item in enumerate(value):
            if problem := _json_problem(item, f"{path}[{i}]"):
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                return f"a key in {path} is not valid Unicode text"
            if problem := _json_problem(item, f"{path}.{key}"):
                return problem
    return None


class PagerDutySeverity(enum.StrEnum):
    """The severities PagerDuty accepts in ``payload.severity`` (and ``metadata.severity``)."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


SEVERITIES = tuple(PagerDutySeverity)


if TYPE_CHECKING:
    from pydantic._internal._model_construction import ModelMetaclass
else:
    ModelMetaclass = type(BaseModel)


class _OneLineErrors(ModelMetaclass):
    """Building a model by calling it (``Notification(...)``, a producer's first contact
    with the service) raises the one-line :class:`InvalidJobError` that ``enqueue``
    raises, not pydantic's multi-line report. Validation inside pydantic
    (``model_validate``, a field of another model) does not come through here, so it
    keeps raising ``ValidationError`` with the full path of each field."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise InvalidJobError(validation_errors(exc)) from None


#: The bounds on a notification's fields: the recipient (or component), and a name (the
#: alert's name, the idempotency id).
RECIPIENT_MAX_CHARS = 4096
NAME_MAX_CHARS = 1024


class EventLink(BaseModel):
    """One of ``metadata.links``: a link PagerDuty shows on the incident."""

    model_config = ConfigDict(extra="forbid")
    href: str
    text: str | None = None

    @field_validator("href")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank: PagerDuty refuses the whole event")
        return value


class EventImage(BaseModel):
    """One of ``metadata.images``: an image PagerDuty shows on the incident."""

    model_config = ConfigDict(extra="forbid")
    src: str = Field(description="PagerDuty shows only https images")
    href: str | None = None
    alt: str | None = None

    @field_validator("src")
    @classmethod
    def _https(cls, value: str) -> str:
        if not re.match(r"https://[^\s/]", value):
            raise ValueError("must be an https:// URL with a host: PagerDuty shows no other")
        return value


EVENT_LINKS = TypeAdapter(list[EventLink])
EVENT_IMAGES = TypeAdapter(list[EventImage])


class Notification(BaseModel, metaclass=_OneLineErrors):
    """One notification as a producer submits it.

    ``recipient`` is an email address (or several, comma-separated) for email, and the
    affected component for PagerDuty. ``idempotency_id`` is the job's identity: it becomes
    the PagerDuty ``dedup_key`` and the email Message-ID, so a resend is recognisable.
    ``metadata`` is free-form JSON; for PagerDuty the keys ``group``/``team``, ``links``,
    ``images``, ``client`` and ``client_url`` have their Events API meaning, and
    ``source``, ``component``, ``class``, ``severity``, ``dedup_key`` and
    ``custom_details`` override the fields the event would otherwise derive (a
    ``dedup_key`` here names the incident while ``idempotency_id`` still names the job).

    A bad field raises :class:`~worker.exceptions.InvalidJobError` (a ``ValueError``)
    naming each field in one line, as ``tasks.enqueue`` does.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    recipient: str = Field(
        max_length=RECIPIENT_MAX_CHARS,
        description="Email address(es), or the affected component.",
    )
    subject: str = Field(description="One-line summary; the PagerDuty incident title.")
    body: str = Field(default="", description="Plain-text body / incident details.")
    body_html: str | None = Field(default=None, description="Optional HTML alternative.")
    priority: NotificationPriority = NotificationPriority.NORMAL
    alert_name: str | None = Field(
        default=None, max_length=NAME_MAX_CHARS, description="Alert rule name (PagerDuty class)."
    )
    db_instance_id: int | str | None = None
    idempotency_id: str | None = Field(
        default=None,
        max_length=NAME_MAX_CHARS,
        description="Stable job identity: dedup key, Message-ID seed.",
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("recipient", "subject")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("recipient", "subject", "body", "body_html", "alert_name", "idempotency_id")
    @classmethod
    def _valid_unicode(cls, value: str | None) -> str | None:
        return check_unicode(value) if value is not None else None

    @field_validator("db_instance_id", mode="before")
    @classmethod
    def _integer_or_string(cls, value: Any) -> Any:
        # One error naming the field: pydantic would report each member of the union on
        # its own, as fields that do not exist (``db_instance_id.int``, ``.str``).
        if isinstance(value, bool):
            # JSON's true is no instance id; pydantic would read it as the number 1.
            raise ValueError("must be an integer or a string, not true or false")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"must be an integer or a string, not the number {value!r}")
        if value is not None and not isinstance(value, int | float | str):
            raise ValueError(f"must be an integer or a string, not {_json_kind(value)}")
        return value

    @field_validator("db_instance_id")
    @classmethod
    def _valid_id(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, str):
            check_unicode(value)
            if len(value) > 255:
                raise ValueError("must be at most 255 characters")
        elif isinstance(value, int) and abs(value) >= _MAX_INT:
            raise ValueError("must be an integer within 64 bits, or a string")
        return value

    @field_validator("recipient", "subject", "alert_name", "idempotency_id")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # These become email headers and PagerDuty fields: a line break here is either a
        # mistake or a header-injection attempt.
        if value is not None and not is_one_line(value):
            raise ValueError(ONE_LINE_MESSAGE)
        return value

    @field_validator("idempotency_id")
    @classmethod
    def _id_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank when given (omit it instead)")
        return value

    @field_validator("metadata")
    @classmethod
    def _event_fields(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        # Checked here, at enqueue, so a bad override is refused before it is queued.
        if problem := _json_problem(value, "metadata"):
            raise ValueError(problem)
        for key in ONE_LINE_METADATA_KEYS & value.keys():
            item = value[key]
            if key == "team" and not isinstance(item, str):
                continue  # only a string team becomes the PagerDuty group
            if not isinstance(item, str) or not item.strip() or not is_one_line(item):
                raise ValueError(f"metadata.{key} must be a non-blank single-line string")
        severity = value.get("severity")
        if severity is not None and severity not in SEVERITIES:
            raise ValueError(f"metadata.severity must be one of {', '.join(SEVERITIES)}")
        if "custom_details" in value and not isinstance(value["custom_details"], dict):
            raise ValueError("metadata.custom_details must be a JSON object")
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_any_case(cls, value: Any) -> Any:
        # Producers in other languages send "CRITICAL" as often as "critical".
        return value.lower() if isinstance(value, str) else value


def event_links_problem(metadata: dict[str, JsonValue]) -> str | None:
    """What PagerDuty would refuse in ``metadata``'s ``links`` or ``images`` (which only a
    page uses: to an email they are any metadata), or None."""
    for key, shape in (("links", EVENT_LINKS), ("images", EVENT_IMAGES)):
        if key in metadata:
            try:
                shape.validate_python(metadata[key])
            except ValidationError as exc:
                return described(f"metadata.{key}", exc)
    return None


def content_key(notification: Notification) -> str:
    """A stable identity for a notification that has no idempotency id: a hash of its whole
    content, so every retry of the same job yields the same key."""
    canonical = json.dumps(notification.model_dump(mode="json"), sort_keys=True)
    return "gds-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]


class NotificationResult(BaseModel):
    """What a provider reports after a peer accepted (or partly accepted) a notification."""

    model_config = ConfigDict(extra="forbid")

    status: NotificationStatus
    recipient: str
    provider: str
    message_id: str | None = None
    timestamp: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    error_message: str | None = None
    retry_after: float | None = None
    retryable: bool = False
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _assume_utc(cls, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("timestamp")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def is_success(self) -> bool:
        """True when the peer accepted the notification."""
        return self.status in (NotificationStatus.SENT, NotificationStatus.DELIVERED)

    def is_retriable(self) -> bool:
        """True when sending it again later may succeed (throttled, or a transient failure)."""
        if self.is_success():
            return False
        return self.status is NotificationStatus.RATE_LIMITED or self.retryable
