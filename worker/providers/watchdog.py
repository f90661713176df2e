"""The watchdog's one call: tell an external dead man's switch (Healthchecks, Dead Man's
Snitch, Cronitor) that the canary came through, or that the service sees itself failing.

One verb, :meth:`WatchdogPinger.ping`; failures are :class:`~worker.exceptions` errors like
every provider's. The URL is a secret (it is its own credential): errors and logs name
its host only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from worker.exceptions import (
    NotificationConnectionError,
    NotificationDeliveryError,
    NotificationTimeoutError,
)

#: An external monitor that takes longer than this is as good as down for this ping.
TIMEOUT_SECONDS = 10.0


class WatchdogPinger:
    """Calls watchdog URLs over one reused HTTP client."""

    name = "watchdog"

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True)

    def ping(self, url: SecretStr, body: str = "") -> int:
        """GET ``url`` (POST with ``body``, which a monitor keeps as the ping's log); the
        status code. Raises on no answer or an answer other than 2xx."""
        raw = url.get_secret_value()
        host = urlsplit(raw).netloc.rsplit("@", 1)[-1]
        try:
            if body:
                response = self._client.post(raw, content=body.encode())
            else:
                response = self._client.get(raw)
        except httpx.TimeoutException:
            raise NotificationTimeoutError(
                f"the watchdog at {host} did not answer within {self.timeout:g}s",
                self.timeout,
                self.name,
            ) from None
        except httpx.TransportError as exc:
            raise NotificationConnectionError(
                f"cannot reach the watchdog at {host}: {type(exc).__name__}", self.name
            ) from None
        if not 200 <= response.status_code < 300:
            raise NotificationDeliveryError(
                f"the watchdog at {host} answered {response.status_code}",
                response.status_code,
                retryable=response.status_code >= 500,
                provider=self.name,
            )
        return response.status_code

    def close(self) -> None:
        self._client.close()
