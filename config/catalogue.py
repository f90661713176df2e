"""The heartbeat service catalogue: a TOML file named by ``HEARTBEAT_SERVICES_FILE``.

One table per service::

    [services.billing-api]
    name = "Billing API"
    team = "payments"                 # group on the incident; picks the routing key
    priority = "P2"                   # P1 critical, P2 error, P3 warning, P4 and P5 info
    window = "5m"                     # seconds, or "90s" / "5m" / "1h" / "1d"
    threshold = 1                     # least heartbeats expected within the window
    grace = "30s"                     # extra time before a miss counts
    runbook_url = "https://runbooks.example/billing-api"
    routing_key_team = "dba"          # optional: page with PAGERDUTY_ROUTING_KEY_DBA instead
    max_duration = "2h"               # optional: a run started (/start) and not finished
                                      # within this pages ("ran too long")
    ping_uuid = "5cca24d4-..."        # optional: Healthchecks' /ping/{uuid} URLs ping it

    [[services.billing-api.maintenance]]          # one-off
    start = 2026-12-01T22:00:00Z
    end = 2026-12-01T23:30:00Z

    [[services.billing-api.maintenance]]          # recurring
    cron = "0 2 * * SUN"
    duration = "2h"
    timezone = "Europe/London"

    [services.billing-api.flap]
    failures_before_page = 2          # consecutive failing checks before paging
    successes_before_resolve = 2      # consecutive good checks before resolving
    storm_incidents = 3               # at most this many incidents ...
    storm_period = "1h"               # ... opened in any such period

The file is validated as a whole when it is loaded; a bad entry fails with the service and
the field named (``services.billing-api.window: ...``). Services can also be registered at
run time (Medic's ``POST /service``, worker/engine/heartbeats/registry.py); a file entry
wins over a registered one of the same slug.
"""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from config.moments import parse_duration
from worker.exceptions import NotificationConfigError
from worker.notification import check_unicode, is_one_line
from worker.validation import path, problem

logger = logging.getLogger(__name__)

SLUG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
RUNBOOK_PATTERN = r"^https?://\S+$"
#: A Healthchecks check's UUID, as its ping URLs carry it.
PING_UUID_PATTERN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
Duration = Annotated[float, BeforeValidator(parse_duration)]
Priority = Literal["P1", "P2", "P3", "P4", "P5"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name like 'Europe/London')"
        ) from None


def _known_zone(name: str) -> str:
    _zone(name)
    return name


#: An IANA time zone name, checked when the catalogue is read.
ZoneName = Annotated[str, AfterValidator(_known_zone)]


class OneOffWindow(_Strict):
    """Maintenance from ``start`` to ``end``. Times carry an offset (``2026-12-01T22:00:00Z``)
    or are read in ``timezone``."""

    start: datetime
    end: datetime
    timezone: ZoneName = "UTC"
    reason: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> OneOffWindow:
        if self.starts_at() >= self.ends_at():
            raise ValueError("end must be after start")
        return self

    def _aware(self, when: datetime) -> datetime:
        return when if when.tzinfo else when.replace(tzinfo=_zone(self.timezone))

    def starts_at(self) -> datetime:
        return self._aware(self.start)

    def ends_at(self) -> datetime:
        return self._aware(self.end)

    def active_until(self, at: datetime) -> datetime | None:
        """The window's end if ``at`` falls inside it, else None."""
        return self.ends_at() if self.starts_at() <= at < self.ends_at() else None


class RecurringWindow(_Strict):
    """Maintenance for ``duration`` from every time the cron expression fires, read in
    ``timezone`` (so "0 2 * * SUN" in Europe/London follows summer time)."""

    cron: str
    duration: Duration = Field(gt=0)
    timezone: ZoneName = "UTC"
    reason: str | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            CronSim(value, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression {value!r}: {exc}") from None
        return value

    def active_until(self, at: datetime) -> datetime | None:
        """The end of the occurrence ``at`` falls in, else None."""
        local = at.astimezone(_zone(self.timezone)).replace(microsecond=0) + timedelta(seconds=1)
        # The latest occurrence at or before ``at`` is the one whose window ends last.
        last = next(CronSim(self.cron, local, reverse=True), None)
        if last is None:
            return None
        ends = last.astimezone(UTC) + timedelta(seconds=self.duration)
        return ends if last.astimezone(UTC) <= at < ends else None


def _window_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "recurring" if "cron" in value else "once"
    return "recurring" if isinstance(value, RecurringWindow) else "once"


MaintenanceWindow = Annotated[
    Annotated[OneOffWindow, Tag("once")] | Annotated[RecurringWindow, Tag("recurring")],
    Discriminator(_window_kind),
]


class FlapSettings(_Strict):
    """How many checks in a row change a service's state, and the incident-storm guard."""

    failures_before_page: int = Field(default=1, ge=1, le=1000)
    successes_before_resolve: int = Field(default=1, ge=1, le=1000)
    storm_incidents: int = Field(default=3, ge=1, le=1000)
    storm_period: Duration = Field(default=3600.0, gt=0)


class ServiceSpec(_Strict):
    """One monitored service."""

    slug: str
    name: str = Field(min_length=1, max_length=255)
    team: str = Field(min_length=1, max_length=255)
    priority: Priority
    window: Duration = Field(gt=0, le=30 * 86_400)
    threshold: int = Field(default=1, ge=1, le=10_000)
    grace: Duration = Field(default=0.0, ge=0, le=30 * 86_400)
    runbook_url: str | None = Field(default=None, pattern=RUNBOOK_PATTERN, max_length=2048)
    routing_key_team: str | None = Field(default=None, min_length=1)
    description: str | None = None
    maintenance: tuple[MaintenanceWindow, ...] = ()
    flap: FlapSettings = FlapSettings()
    max_duration: Duration | None = Field(default=None, gt=0, le=30 * 86_400)
    #: Muted: still watched and shown, never paged (Medic's mute).
    muted: bool = False
    #: Inactive: not watched; an open incident is resolved (Medic's deactivate).
    active: bool = True

    @field_validator("name", "team", "routing_key_team")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # As intake checks the page's summary, component and team: a name it would refuse
        # is a service that could never be paged for.
        if value is not None:
            check_unicode(value)
            if not value.strip() or not is_one_line(value):
                raise ValueError("must be a non-blank single line")
        return value

    @property
    def span(self) -> float:
        """Seconds of history a check counts over: the window plus its grace."""
        return self.window + self.grace

    @property
    def dedup_key(self) -> str:
        return f"medic-heartbeat-{self.slug}"

    @property
    def paging_team(self) -> str:
        """The team whose routing key pages for this service."""
        return self.routing_key_team or self.team

    def maintenance_until(self, at: datetime) -> datetime | None:
        """When the maintenance window covering ``at`` ends, or None if there is none."""
        ends = [end for w in self.maintenance if (end := w.active_until(at)) is not None]
        return max(ends) if ends else None


class CatalogueEntry(ServiceSpec):
    """A service in the file: the on-call's runbook is required there."""

    runbook_url: str = Field(pattern=RUNBOOK_PATTERN, max_length=2048)
    #: The UUID of the Healthchecks check this service replaces: its crontab lines ping
    #: ``/ping/{uuid}`` unchanged but for the host (the UUID is their credential, as it is
    #: to Healthchecks). Only in the file: a registered service has no UUID.
    ping_uuid: str | None = None
    #: Whether a page for a failure the service reported carries the start of its job's
    #: output (``reported_output``). Off: output may hold what PagerDuty, a third party
    #: every responder reads, should not (connection strings, hostnames, tokens).
    page_output: bool = False

    @field_validator("ping_uuid")
    @classmethod
    def _a_uuid(cls, value: str | None) -> str | None:
        if value is not None and not PING_UUID_PATTERN.fullmatch(value):
            raise ValueError("must be a UUID, as in a Healthchecks ping URL")
        return value.lower() if value is not None else None


def _shared_ping_uuids(services: dict[str, ServiceSpec]) -> dict[str, list[str]]:
    """Each ``ping_uuid`` more than one service gives, and those services' slugs."""
    owners: dict[str, list[str]] = {}
    for slug, spec in services.items():
        if isinstance(spec, CatalogueEntry) and spec.ping_uuid is not None:
            owners.setdefault(spec.ping_uuid, []).append(slug)
    return {uuid: slugs for uuid, slugs in owners.items() if len(slugs) > 1}


class Catalogue(_Strict):
    """Every monitored service, by slug: the file's, and (:meth:`merged`) those registered
    at run time."""

    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    _registered: frozenset[str] = PrivateAttr(default=frozenset())
    _by_uuid: dict[str, ServiceSpec] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _uuids_unique(self) -> Catalogue:
        if shared := _shared_ping_uuids(self.services):
            uuid, (first, second, *_) = next(iter(shared.items()))
            raise ValueError(f"services.{second}.ping_uuid: {uuid} is services.{first}'s too")
        return self

    def by_ping_uuid(self, uuid: str) -> ServiceSpec | None:
        """The service whose ``ping_uuid`` is ``uuid`` (any case), or None."""
        if self._by_uuid is None:
            self._by_uuid = {
                spec.ping_uuid: spec
                for spec in self.services.values()
                if isinstance(spec, CatalogueEntry) and spec.ping_uuid is not None
            }
        return self._by_uuid.get(uuid.lower())

    @model_validator(mode="before")
    @classmethod
    def _slugs_from_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("services"), dict):
            services = {}
            for slug, entry in data["services"].items():
                if not SLUG_PATTERN.fullmatch(slug):
                    raise ValueError(
                        f"services.{slug}: a slug is 1-100 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit"
                    )
                services[slug] = {**entry, "slug": slug} if isinstance(entry, dict) else entry
            data = {**data, "services": services}
        return data

    def get(self, slug: str) -> ServiceSpec | None:
        return self.services.get(slug)

    def merged(self, registered: dict[str, ServiceSpec]) -> Catalogue:
        """This catalogue with the services registered at run time; a file entry wins."""
        if not registered:
            return self
        extra = {slug: spec for slug, spec in registered.items() if slug not in self.services}
        merged = Catalogue(services={**self.services, **extra})
        merged._registered = frozenset(extra)
        return merged

    def is_registered(self, slug: str) -> bool:
        """Whether ``slug`` was registered at run time (not in the file)."""
        return slug in self._registered


class _CatalogueFile(Catalogue):
    services: dict[str, CatalogueEntry] = Field(default_factory=dict)  # type: ignore[assignment]


class UnknownServiceError(NotificationConfigError):
    """A heartbeat for a slug the catalogue does not list."""


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        where = path(item["loc"], skip=("once", "recurring"))
        problems.append(f"{where}: {problem(item)}" if where else problem(item))
    return "; ".join(problems)


def parse_catalogue(text: str, origin: str = "catalogue") -> Catalogue:
    """A Catalogue from TOML text; NotificationConfigError naming the service and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NotificationConfigError(f"{origin}: not valid TOML: {exc}") from None
    try:
        parsed = _CatalogueFile.model_validate(data)
    except ValidationError as exc:
        raise NotificationConfigError(f"{origin}: {_describe(exc)}") from None
    return Catalogue(services=dict(parsed.services))


def load_catalogue(path: Path | str) -> Catalogue:
    """Read and validate the catalogue file."""
    origin = f"HEARTBEAT_SERVICES_FILE {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise NotificationConfigError(f"{origin}: cannot be read: {exc.strerror}") from None
    return parse_catalogue(text, origin)


def salvage_catalogue(path: Path | str) -> Catalogue | None:
    """The services of the file that validate on their own, each as the whole file would
    have it; None when the file cannot be read or is not TOML (nothing to salvage)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    entries = data.get("services")
    if not isinstance(entries, dict):
        return None
    kept: dict[str, ServiceSpec] = {}
    for slug, entry in entries.items():
        try:
            one = _CatalogueFile.model_validate({"services": {slug: entry}})
        except ValidationError:
            continue
        kept.update(one.services)
    # A UUID two entries give names neither (a ping to it cannot say which it is for);
    # both services are still watched, and their slug URLs still work.
    for slugs in _shared_ping_uuids(kept).values():
        for slug in slugs:
            kept[slug] = kept[slug].model_copy(update={"ping_uuid": None})
    return Catalogue(services=kept)


class CatalogueFile:
    """The catalogue at a path, re-read when the file changes. A change that does not
    validate is refused (the last good catalogue stays in force) and the error kept.

    A file bad from the start raises, unless ``salvage``: then its services that validate
    are in force and the error is kept (a door that records heartbeats must not refuse
    every service for one bad entry; a worker or beat still stops on it at start)."""

    def __init__(self, path: Path | str, salvage: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.last_error: str | None = None
        try:
            self._catalogue = load_catalogue(self.path)
        except NotificationConfigError as exc:
            salvaged = salvage_catalogue(self.path) if salvage else None
            if salvaged is None:
                raise
            self._catalogue = salvaged
            self.last_error = str(exc)
            logger.error(
                "heartbeat catalogue refused; its %d services that validate are in force "
                "(a worker or beat started now would stop): %s",
                len(salvaged.services),
                exc,
            )
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> Catalogue:
        with self._lock:
            stamp = self._stat()
            if stamp is None and self._stamp is not None:
                # Gone (deleted, moved, unreadable): what is in force stays, but the next
                # worker or beat to start on it stops.
                self._stamp = None
                self.last_error = f"HEARTBEAT_SERVICES_FILE {self.path}: cannot be read"
                logger.error(
                    "heartbeat catalogue %s; the last good one stays in force", self.last_error
                )
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._catalogue = load_catalogue(self.path)
                    self.last_error = None
                except NotificationConfigError as exc:
                    self.last_error = str(exc)
                    # Once per edit. The services it adds are not watched, and the next
                    # start of a worker or beat on this file stops with this error.
                    logger.error(
                        "heartbeat catalogue edit refused, the last good one stays in force "
                        "(a worker or beat started now would stop): %s",
                        exc,
                    )
            return self._catalogue


__all__ = [
    "Catalogue",
    "CatalogueEntry",
    "CatalogueFile",
    "FlapSettings",
    "OneOffWindow",
    "RecurringWindow",
    "ServiceSpec",
    "UnknownServiceError",
    "load_catalogue",
    "parse_catalogue",
    "parse_duration",
    "salvage_catalogue",
]
