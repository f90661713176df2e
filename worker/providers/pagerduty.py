"""PagerDuty Events API v2 provider: the one place this service talks HTTP to PagerDuty.

``PagerDutyProvider`` posts events built by :mod:`worker.providers.pagerduty_events` over
one reused ``httpx.Client`` and turns every answer into a ``NotificationResult`` or an
exception from :mod:`worker.exceptions`:

====================================  ===============================================
PagerDuty's answer                    what the caller gets
====================================  ===============================================
202 with ``dedup_key``                SENT result, ``metadata["dedup_key"]``
2xx without ``dedup_key``             ``NotificationDeliveryError``, retryable
400 (JSON errors or plain text)       ``NotificationDeliveryError`` "rejected event", final
429                                   ``NotificationRateLimitError`` with Retry-After
                                      (seconds or HTTP date) or ``ratelimit-reset``
5xx, 408                              ``NotificationDeliveryError``, retryable
other 4xx                             ``NotificationDeliveryError``, final
timeout                               ``NotificationTimeoutError(timeout_seconds)``
refused / reset / dropped connection  ``NotificationConnectionError``
====================================  ===============================================

The routing key appears in no repr, log line or exception message, only its last four
characters.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr

from config.settings import DEFAULT_API_URL, get_settings
from worker.exceptions import (
    NotificationConfigError,
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationRateLimitError,
    NotificationTimeoutError,
)
from worker.notification import PagerDutySeverity
from worker.providers.base import (
    BaseNotificationProvider,
    Notification,
    NotificationResult,
    NotificationStatus,
)
from worker.providers.pagerduty_events import (
    EventAction,
    build_change,
    build_lifecycle,
    build_trigger,
    encode_event,
)
from worker.redact import mask, url_shown

__all__ = ["DEFAULT_API_URL", "PagerDutyProvider", "PagerDutySeverity", "parse_retry_after"]

logger = logging.getLogger(__name__)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After`` (delta-seconds or HTTP date) or
    ``ratelimit-reset``; ``None`` when the server gave no usable hint."""
    raw = headers.get("retry-after")
    if raw is not None:
        raw = raw.strip()
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    reset = headers.get("ratelimit-reset")
    if reset is not None:
        try:
            return max(0.0, float(reset.strip()))
        except ValueError:
            return None
    return None


def change_url_for(api_url: str) -> str:
    """The change-events URL on the same host as the alert-events URL."""
    base = api_url.rstrip("/")
    if base.endswith("/v2/enqueue"):
        return base[: -len("/v2/enqueue")] + "/v2/change/enqueue"
    return base + "/change/enqueue"


class PagerDutyProvider(BaseNotificationProvider):
    """Sends trigger, acknowledge, resolve and change events to one PagerDuty integration.

    ``api_url`` defaults to the ``PAGERDUTY_API_URL`` setting (itself defaulting to
    PagerDuty's US endpoint), so the same code runs against the sandbox or an EU account.
    """

    name = "pagerduty"

    def __init__(
        self,
        routing_key: str | SecretStr | None,
        timeout: float = 30.0,
        default_severity: PagerDutySeverity | str = PagerDutySeverity.ERROR,
        source: str = "gds_notification",
        api_url: str | None = None,
    ) -> None:
        raw_key = (
            routing_key.get_secret_value() if isinstance(routing_key, SecretStr) else routing_key
        )
        if not raw_key or not raw_key.strip():
            raise NotificationConfigError("routing key is required", provider=self.name)
        try:
            self.default_severity = PagerDutySeverity(default_severity)
        except ValueError:
            allowed = ", ".join(s.value for s in PagerDutySeverity)
            raise NotificationConfigError(
                f"default_severity must be one of {allowed}", provider=self.name
            ) from None
        if timeout <= 0:
            raise NotificationConfigError("timeout must be greater than 0", provider=self.name)
        if not source or not source.strip():
            raise NotificationConfigError("source must not be blank", provider=self.name)
        self._routing_key = SecretStr(raw_key)
        self.timeout = float(timeout)
        self.source = source
        if api_url is None:
            api_url = get_settings().pagerduty_api_url
        self.api_url = api_url
        self.change_url = change_url_for(api_url)
        self._client: httpx.Client | None = None

    @property
    def routing_key(self) -> str:
        return self._routing_key.get_secret_value()

    def _scrub(self, text: str) -> str:
        """``text`` with the routing key in it cut to its last four characters."""
        return text.replace(self.routing_key, mask(self._routing_key))

    def __repr__(self) -> str:
        return (
            f"PagerDutyProvider(routing_key={mask(self._routing_key)!r}, "
            f"api_url={url_shown(self.api_url)!r}, timeout={self.timeout})"
        )

    __str__ = __repr__

    # -- the verbs ---------------------------------------------------------------------

    def trigger(
        self,
        notification: Notification,
        *,
        at: datetime | None = None,
        replay_of: str | None = None,
    ) -> NotificationResult:
        """Open an incident, or append to the open one with the same dedup_key. ``at``: when
        the alert was raised (the event's timestamp; now when not given); ``replay_of``: what
        this replays (a dead letter's job), shown in the incident's details."""
        event = build_trigger(
            notification,
            routing_key=self.routing_key,
            source=self.source,
            default_severity=self.default_severity,
            now=at,
            replay_of=replay_of,
        )
        return self._result(self._post(self.api_url, event), event, notification.recipient)

    def send(self, notification: Notification) -> NotificationResult:
        """Same as :meth:`trigger`: a notification sent to PagerDuty is a page."""
        return self.trigger(notification)

    def acknowledge(self, dedup_key: str) -> NotificationResult:
        """Mark the open incident with ``dedup_key`` as being worked on."""
        return self._lifecycle(EventAction.ACKNOWLEDGE, dedup_key)

    def resolve(self, dedup_key: str) -> NotificationResult:
        """Close the incident with ``dedup_key``; a later trigger opens a new one."""
        return self._lifecycle(EventAction.RESOLVE, dedup_key)

    def change(
        self,
        summary: str,
        *,
        source: str | None = None,
        timestamp: datetime | None = None,
        custom_details: dict[str, Any] | None = None,
        links: list[dict[str, Any]] | None = None,
    ) -> NotificationResult:
        """Record a change event (deploy, config change) on the service; opens no incident."""
        if not summary.strip():
            raise NotificationDeliveryError(
                "change event summary must not be blank", retryable=False, provider=self.name
            )
        event = build_change(
            routing_key=self.routing_key,
            summary=summary,
            source=source or self.source,
            timestamp=timestamp,
            custom_details=custom_details,
            links=links,
        )
        body = self._post(self.change_url, event, need_dedup_key=False)
        return NotificationResult(
            status=NotificationStatus.SENT,
            recipient=source or self.source,
            provider=self.name,
            metadata={"action": "change", "message": body.get("message")},
        )

    def health_check(self) -> bool:
        """True when the URL answers as PagerDuty's Events API does. Opens no incident:
        PagerDuty has no way to check a routing key without creating one."""
        return self.diagnose() is None

    def diagnose(self) -> str | None:
        """None when the URL answers as the Events API v2 does; else what went wrong. It is
        sent an empty event, which the Events API refuses (400, its JSON naming what is
        missing) and nothing else answers so: a URL with a wrong path, or another server,
        answered 404 or 200 to the GET this sent before, and passed."""
        shown = url_shown(self.api_url)
        try:
            response = self._http().post(self.api_url, content=b"{}")
        except httpx.HTTPError as exc:
            logger.warning("pagerduty health check failed: %s", type(exc).__name__)
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status = response.status_code
        if status == 429:  # the Events API, busy: it is there
            return None
        if status >= 500:
            return f"{shown} answered HTTP {status}"
        body = _json_object(response)
        if status == 400 and body is not None and isinstance(body.get("errors"), list):
            return None
        return (
            f"{shown} answered HTTP {status} to an empty event, where the Events API v2 "
            "answers 400 naming what is missing: is it the enqueue URL "
            "(https://events.pagerduty.com/v2/enqueue)?"
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- HTTP boundary -----------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.timeout),
                headers={"Content-Type": "application/json", "User-Agent": "gds-notification"},
            )
        return self._client

    def _lifecycle(self, action: EventAction, dedup_key: str) -> NotificationResult:
        if not dedup_key or not dedup_key.strip():
            raise NotificationDeliveryError(
                f"{action.value} needs a dedup_key", retryable=False, provider=self.name
            )
        event = build_lifecycle(action, routing_key=self.routing_key, dedup_key=dedup_key)
        return self._result(self._post(self.api_url, event), event, dedup_key)

    def _result(
        self, body: dict[str, Any], event: dict[str, Any], recipient: str
    ) -> NotificationResult:
        dedup_key = str(body["dedup_key"])
        return NotificationResult(
            status=NotificationStatus.SENT,
            recipient=recipient,
            provider=self.name,
            message_id=dedup_key,
            metadata={
                "dedup_key": dedup_key,
                "action": event["event_action"],
                "status": body.get("status"),
                "message": body.get("message"),
            },
        )

    def _post(self, url: str, event: dict[str, Any], need_dedup_key: bool = True) -> dict[str, Any]:
        """POST ``event``; return PagerDuty's JSON answer or raise the classified error."""
        action = event.get("event_action", "change")
        try:
            response = self._http().post(url, content=encode_event(event))
        except httpx.TimeoutException as exc:
            raise NotificationTimeoutError(
                f"PagerDuty did not answer within {self.timeout:g}s ({type(exc).__name__})",
                self.timeout,
                self.name,
            ) from None
        except httpx.TransportError as exc:
            raise NotificationConnectionError(
                f"cannot reach PagerDuty at {url_shown(url)}: {type(exc).__name__}: {exc}",
                self.name,
            ) from None
        logger.info(
            "pagerduty %s key=%s dedup_key=%s -> %s",
            action,
            mask(self._routing_key),
            event.get("dedup_key"),
            response.status_code,
        )
        return self._classify(response, need_dedup_key)

    def _classify(self, response: httpx.Response, need_dedup_key: bool) -> dict[str, Any]:
        status = response.status_code
        body = _json_object(response)
        if 200 <= status < 300:
            if body is None or (need_dedup_key and not body.get("dedup_key")):
                raise NotificationDeliveryError(
                    f"PagerDuty answered {status} without a dedup_key; treating it as a "
                    "server error",
                    status,
                    retryable=True,
                    provider=self.name,
                )
            said = body.get("status", "success")
            if said != "success":
                # The Events API's answer names its outcome: "success", else "a short error
                # message in case of a failure" (its schema), whatever the HTTP status.
                raise NotificationDeliveryError(
                    f"PagerDuty answered {status} with status {str(said)[:200]!r}, not "
                    "'success'; treating it as a server error",
                    status,
                    retryable=True,
                    provider=self.name,
                )
            return body
        if status == 429:
            wait = parse_retry_after(response.headers)
            hint = f"retry after {wait:g}s" if wait is not None else "no Retry-After given"
            raise NotificationRateLimitError(
                f"PagerDuty rate limit exceeded ({hint})", wait, self.name
            )
        # A server (or a proxy) may quote the routing key it refused: never past here.
        errors = [self._scrub(e) for e in _error_texts(body, response.text)]
        detail = "; ".join(errors) if errors else f"HTTP {status}"
        if status == 400:
            message = self._scrub(str(body["message"])) if body and body.get("message") else None
            raise NotificationDeliveryError(
                f"PagerDuty rejected event: {message + ': ' if message else ''}{detail}",
                status,
                errors,
                retryable=False,
                provider=self.name,
            )
        retryable = status >= 500 or status == 408
        raise NotificationDeliveryError(
            f"PagerDuty answered HTTP {status}: {detail}",
            status,
            errors,
            retryable=retryable,
            provider=self.name,
        )


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error_texts(body: dict[str, Any] | None, text: str) -> list[str]:
    if body is not None:
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return [str(e) for e in errors]
        if body.get("message"):
            return [str(body["message"])]
        return []
    text = text.strip()
    return [text[:500]] if text else []
