"""The one exception tree every provider raises, and what each branch means for a retry.

::

    NotificationError                 base; ``retryable`` says whether trying again can help
    ├── NotificationConfigError       our side is wrong (missing key, bad credentials): never retry
    ├── NotificationConnectionError   refused / reset / dropped connection, DNS: retry with backoff
    ├── NotificationTimeoutError      no answer within ``timeout_seconds``: retry with backoff
    ├── NotificationRateLimitError    throttled; wait at least ``retry_after_seconds`` (None when
    │                                 the server did not say) before retrying
    └── NotificationDeliveryError     the server answered and refused: ``status_code`` and the
        │                             server's ``errors``; retryable for HTTP 5xx and for
        │                             answers that break the protocol, never for a 4xx
        │                             rejection or a permanent SMTP 5xx
        └── InvalidFieldError         a field that can never be delivered as given (a bad
                                      address, a header-injection attempt): ``field`` names
                                      it, ``problem`` says why; never retried

Providers translate their library's errors into this tree in one place each; nothing above
the provider layer ever sees an ``httpx`` or ``aiosmtplib`` exception.

Beside the tree, :class:`InvalidJobError` (a ``ValueError``) is the producer's error: a
job refused before anything was queued, each bad field named.

Every exception keeps its constructor arguments, in order, in ``self.args``. That one rule is
what lets them cross process boundaries: ``pickle`` rebuilds an exception as ``cls(*args)``,
and so does Celery's JSON exception serializer. ``to_dict()`` / ``NotificationError.from_dict()``
give the same round trip through plain JSON (dead letters, job status). Messages never hold
secrets: providers mask routing keys and never put passwords into text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "InvalidFieldError",
    "InvalidJobError",
    "NotificationConfigError",
    "NotificationConnectionError",
    "NotificationDeliveryError",
    "NotificationError",
    "NotificationRateLimitError",
    "NotificationTimeoutError",
]


class NotificationError(Exception):
    """Base of every error the notification providers raise.

    ``provider`` names the provider that raised it (``"pagerduty"``, ``"smtp"``) when known.
    """

    #: Whether repeating the same request later can succeed. Subclasses fix it or derive it.
    default_retryable: ClassVar[bool] = False

    def __init__(self, message: str, provider: str | None = None) -> None:
        super().__init__(message, provider)
        self.message = message
        self.provider = provider

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed if tried again later."""
        return self.default_retryable

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description that :meth:`from_dict` turns back into the same exception."""
        return {
            "type": type(self).__name__,
            "args": list(self.args),
            "message": self.message,
            "retryable": self.retryable,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NotificationError:
        """Rebuild an exception written by :meth:`to_dict`; unknown types become the base class."""
        kind = _REGISTRY.get(str(data.get("type")), NotificationError)
        args = data.get("args")
        if not isinstance(args, list):
            return kind(str(data.get("message", "")))
        return kind(*args)


class NotificationConfigError(NotificationError):
    """The service is misconfigured (missing or rejected credentials, bad settings)."""


class NotificationConnectionError(NotificationError):
    """The peer could not be reached, or the connection broke before an answer arrived."""

    default_retryable = True


class NotificationTimeoutError(NotificationError):
    """No complete answer arrived within ``timeout_seconds``."""

    default_retryable = True

    def __init__(
        self, message: str, timeout_seconds: float | None = None, provider: str | None = None
    ) -> None:
        super().__init__(message, provider)
        self.args = (message, timeout_seconds, provider)
        self.timeout_seconds = timeout_seconds


class NotificationRateLimitError(NotificationError):
    """The peer throttled us; ``retry_after_seconds`` is its requested wait, if it gave one."""

    default_retryable = True

    def __init__(
        self,
        message: str,
        retry_after_seconds: float | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, provider)
        self.args = (message, retry_after_seconds, provider)
        self.retry_after_seconds = retry_after_seconds


class NotificationDeliveryError(NotificationError):
    """The peer answered and did not accept the notification.

    ``status_code`` is the HTTP status or SMTP reply code, ``errors`` the server's own error
    texts. ``retryable`` defaults to the HTTP reading of the status (5xx, or no status at all,
    may pass; anything else will not); SMTP and protocol-level callers pass it explicitly.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        errors: Sequence[str] = (),
        retryable: bool | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, provider)
        self.status_code = status_code
        self.errors: list[str] = [str(e) for e in errors]
        if retryable is None:
            retryable = status_code is None or status_code >= 500
        self._retryable = retryable
        self.args = (message, status_code, self.errors, retryable, provider)

    @property
    def retryable(self) -> bool:
        return self._retryable


class InvalidFieldError(NotificationDeliveryError):
    """One field of a notification can never be delivered as given; found before any I/O.

    ``field`` is the field's name (``recipient``, ``subject``, ``from_addr``) and
    ``problem`` what is wrong with it, so callers report it without parsing the message.
    """

    def __init__(self, field: str, problem: str, provider: str | None = None) -> None:
        message = f"{field}: {problem}"
        super().__init__(message, errors=[message], retryable=False, provider=provider)
        self.args = (field, problem, provider)
        self.field = field
        self.problem = problem


_REGISTRY: dict[str, type[NotificationError]] = {
    cls.__name__: cls
    for cls in (
        NotificationError,
        NotificationConfigError,
        NotificationConnectionError,
        NotificationTimeoutError,
        NotificationRateLimitError,
        NotificationDeliveryError,
        InvalidFieldError,
    )
}


class InvalidJobError(ValueError):
    """A job that can never be delivered as given, refused before anything is queued:
    ``errors`` lists each bad field as ``{"field", "message"}``; the message is one line
    naming them all. Raised by ``Notification(...)``, ``tasks.enqueue`` and intake."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(errors)
        self.errors = errors
        self.message = "invalid notification: " + "; ".join(
            f"{e['field']}: {e['message']}" for e in errors
        )

    def __str__(self) -> str:
        return self.message
