"""Long-lived providers for a worker: one per thread (and per routing key), so each thread
reuses its own HTTP connection and SMTP session across jobs."""

from __future__ import annotations

import threading

from pydantic import SecretStr

from config.settings import Settings
from worker.providers import PagerDutyProvider, SMTPProvider
from worker.providers.watchdog import WatchdogPinger


class ProviderPool:
    """Providers built from one set of settings, kept per thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._all: list[PagerDutyProvider | SMTPProvider] = []
        self._lock = threading.Lock()
        self._watchdog: WatchdogPinger | None = None

    def _cache(self) -> dict[str, PagerDutyProvider | SMTPProvider]:
        cache: dict[str, PagerDutyProvider | SMTPProvider] | None = getattr(
            self._local, "cache", None
        )
        if cache is None:
            cache = self._local.cache = {}
        return cache

    def _keep(self, name: str, provider: PagerDutyProvider | SMTPProvider) -> None:
        self._cache()[name] = provider
        with self._lock:
            self._all.append(provider)

    def pagerduty(self, routing_key: SecretStr) -> PagerDutyProvider:
        """This thread's provider for ``routing_key``."""
        name = "pagerduty:" + routing_key.get_secret_value()
        provider = self._cache().get(name)
        if not isinstance(provider, PagerDutyProvider):
            provider = PagerDutyProvider(
                routing_key,
                timeout=self.settings.pagerduty_timeout,
                default_severity=self.settings.pagerduty_default_severity,
                api_url=self.settings.pagerduty_api_url,
            )
            self._keep(name, provider)
        return provider

    def smtp(self) -> SMTPProvider:
        """This thread's SMTP provider (one session, reused)."""
        provider = self._cache().get("smtp")
        if not isinstance(provider, SMTPProvider):
            provider = SMTPProvider.from_settings(self.settings)
            self._keep("smtp", provider)
        return provider

    def watchdog(self) -> WatchdogPinger:
        """The pinger for the watchdog's calls (one client, shared by the threads)."""
        with self._lock:
            if self._watchdog is None:
                self._watchdog = WatchdogPinger()
            return self._watchdog

    def close(self) -> None:
        """Close every provider any thread built (their connections and sessions)."""
        with self._lock:
            providers, self._all = self._all, []
            watchdog, self._watchdog = self._watchdog, None
        for provider in providers:
            provider.close()
        if watchdog is not None:
            watchdog.close()
