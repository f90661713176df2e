"""``gds-notify config check``: the effective configuration, secrets masked, and live
checks of Redis, the PagerDuty URL and the SMTP server."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import redis
from dotenv import dotenv_values
from pydantic import SecretStr

from cli.common import EXIT_FAILED, one_line_errors
from config.settings import Settings, get_settings
from worker.engine.redis_client import connect, sentinel_for
from worker.engine.runtime import engine
from worker.exceptions import NotificationConfigError
from worker.providers.pagerduty import PagerDutyProvider
from worker.providers.smtp import SMTPProvider
from worker.redact import mask, url_shown


@click.group()
def config() -> None:
    """The service's configuration."""


def _shown(name: str, value: Any) -> str:

    if isinstance(value, SecretStr):
        return mask(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_shown(name, v)}" for k, v in value.items()) or "-"
    if name == "redis_url":
        return get_settings().redis_address.shown()
    if name == "pagerduty_api_url":
        return url_shown(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"  # as the setting is written
    if value is None and name == "smtp_starttls":
        return "auto"
    return "-" if value is None else str(value)


def _plain(value: Any) -> str:
    dump = getattr(value, "model_dump", None)
    return str(dump(exclude_defaults=True) if dump else value)


@config.command()
@click.option("--offline", is_flag=True, help="Only validate and print; no network checks.")
@one_line_errors
def check(offline: bool) -> None:
    """Validate every setting, print the effective values (secrets masked: last four
    characters only), then check that Redis, the PagerDuty URL and SMTP answer.

    Exit codes: 0 all good; 1 a live check failed; 2 a setting is invalid.
    """

    settings = engine().settings
    names = sorted(type(settings).model_fields)
    width = max(len(n) for n in names)
    for name in names:
        label = (
            "PAGERDUTY_ROUTING_KEY_<TEAM>"
            if name == "pagerduty_team_routing_keys"
            else name.upper()
        )
        shown = _shown(name, getattr(settings, name))
        if name == "smtp_data_timeout" and settings.smtp_data_wait != settings.smtp_data_timeout:
            shown += f" (in effect {settings.smtp_data_wait:g}: never less than SMTP_TIMEOUT)"
        click.echo(f"{label:<{width + 2}} {shown}")
    catalogue = engine().file_catalogue()
    if refused := engine().catalogue_refused():
        raise NotificationConfigError(refused)
    if catalogue is not None:
        click.echo(f"heartbeat catalogue: {len(catalogue.services)} services, valid")
    if settings.pagerduty_routing_key is None:
        click.echo(
            "warning: PAGERDUTY_ROUTING_KEY is not set: only teams with a "
            "PAGERDUTY_ROUTING_KEY_<TEAM> of their own can page",
            err=True,
        )
    for name in _placeholders(settings):
        click.echo(
            f"warning: {name} holds the placeholder .env.example ships (change-me): set a "
            "secret of your own",
            err=True,
        )
    if offline:
        return
    click.echo("")
    failures = 0
    # The probes' own warnings would land between the report's lines; each result below
    # says what failed (-v shows the log).
    quiet = not logging.getLogger().isEnabledFor(logging.INFO)
    if quiet:
        logging.disable(logging.WARNING)
    try:
        for label, probe in (("redis", _redis), ("pagerduty", _pagerduty), ("smtp", _smtp)):
            problem, detail = _safely(probe)
            mark = "ok" if problem is None else "FAILED"
            click.echo(f"{label:<10} {mark}  {problem or detail}".rstrip())
            failures += problem is not None
    finally:
        if quiet:
            logging.disable(logging.NOTSET)
    if failures:
        raise SystemExit(EXIT_FAILED)


#: The passwords `.env.example` ships, to be replaced.
PLACEHOLDERS = frozenset({"change-me", "change-me-too"})


def _placeholders(settings: Settings) -> list[str]:
    """The secrets still set to a placeholder of `.env.example`: Redis' password (in the
    URL, and the Sentinels'), and Flower's login, which Flower reads itself."""
    found = []
    password = urlsplit(settings.redis_url).password
    if password is not None and unquote(password) in PLACEHOLDERS:
        found.append("REDIS_URL")
    sentinel = settings.redis_sentinel_password
    if sentinel is not None and sentinel.get_secret_value() in PLACEHOLDERS:
        found.append("REDIS_SENTINEL_PASSWORD")
    # Flower reads it from the environment honcho or compose give it out of .env, which
    # this process's environment may not hold.
    flower = os.environ.get("FLOWER_BASIC_AUTH") or dotenv_values(".env").get("FLOWER_BASIC_AUTH")
    if (flower or "").rpartition(":")[2] in PLACEHOLDERS:
        found.append("FLOWER_BASIC_AUTH")
    return found


#: A live check's answer: what failed (None when nothing did), and what it found.
Probe = Callable[[], tuple[str | None, str]]


def _safely(probe: Probe) -> tuple[str | None, str]:
    try:
        return probe()
    except Exception as exc:  # a live check reports; it never crashes the command
        return f"{type(exc).__name__}: {exc}", ""


def _redis() -> tuple[str | None, str]:
    settings = get_settings()
    address = settings.redis_address
    client = connect(settings, socket_timeout=3, retry=None)
    try:
        info = client.info("server")
        replication = client.info("replication")
        master = ""
        if address.sentinel:
            sentinels = sentinel_for(settings)
            host, port = sentinels.discover_master(address.master_name)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2
            master = f", master {host}:{port} as the Sentinels say"
    except redis.RedisError as exc:
        return f"{address.shown()}: {type(exc).__name__}: {exc}", ""
    finally:
        client.close()
    replicas = int(replication.get("connected_slaves", 0))
    return None, (
        f"{address.shown()} (Redis {info.get('redis_version')}{master}; "
        f"{replicas} replica{'' if replicas == 1 else 's'})"
    )


def _pagerduty() -> tuple[str | None, str]:

    settings = get_settings()
    key = settings.pagerduty_routing_key
    # The probe sends no event, so any well-formed key will do when none is configured.
    raw = key.get_secret_value() if key else "0" * 32
    with PagerDutyProvider(
        raw, timeout=min(settings.pagerduty_timeout, 10), api_url=settings.pagerduty_api_url
    ) as provider:
        problem = provider.diagnose()
    if problem is None and key is None:
        problem = "URL answers, but PAGERDUTY_ROUTING_KEY is not set"
    return problem, url_shown(settings.pagerduty_api_url)


def _smtp() -> tuple[str | None, str]:
    settings = get_settings()
    with SMTPProvider.from_settings(settings) as provider:
        return provider.diagnose(), f"{settings.smtp_host}:{settings.smtp_port}"
