"""Long-lived providers for the worker: one per thread (and per routing key), so each
thread reuses its own HTTP connection and SMTP session across jobs."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import SecretStr

from config.settings import get_settings
from worker.providers import PagerDutyProvider, SMTPProvider

_local = threading.local()
_generation = 0


def _cache() -> dict[Any, Any]:
    cache: dict[Any, Any] | None = getattr(_local, "cache", None)
    if cache is None or getattr(_local, "generation", -1) != _generation:
        if cache:
            for provider in cache.values():
                provider.close()
        cache = {}
        _local.cache = cache
        _local.generation = _generation
    return cache


def pagerduty(routing_key: SecretStr) -> PagerDutyProvider:
    cache = _cache()
    raw = routing_key.get_secret_value()
    provider = cache.get(("pagerduty", raw))
    if provider is None:
        settings = get_settings()
        provider = PagerDutyProvider(
            routing_key,
            timeout=settings.pagerduty_timeout,
            default_severity=settings.pagerduty_default_severity,
            api_url=settings.pagerduty_api_url,
        )
        cache[("pagerduty", raw)] = provider
    assert isinstance(provider, PagerDutyProvider)
    return provider


def smtp() -> SMTPProvider:
    cache = _cache()
    provider = cache.get("smtp")
    if provider is None:
        provider = SMTPProvider.from_settings(get_settings())
        cache["smtp"] = provider
    assert isinstance(provider, SMTPProvider)
    return provider


def reset_providers() -> None:
    """Make every thread build fresh providers on next use (settings changed)."""
    global _generation
    _generation += 1
