"""Services registered at run time (Medic's ``POST /service``), kept in Redis beside the
file catalogue, which wins for a slug it names. The checker reads them all at each check;
a ping looks its service up through a per-process cache that forgets after
``CACHE_SECONDS``, so a change made through another process is seen within a second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import cast

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from config.catalogue import SLUG_PATTERN, ServiceSpec
from worker.engine import keys

logger = logging.getLogger(__name__)

#: How long a process trusts what it read about a registered service.
CACHE_SECONDS = 1.0
#: The team of a service registered without one (Medic's default).
DEFAULT_TEAM = "site-reliability"
#: Most services the API may register: a key that can register cannot fill Redis.
MAX_REGISTERED = 10_000


class RegistryFullError(Exception):
    """``MAX_REGISTERED`` services are registered already."""


class Registration(BaseModel):
    """A registered service: its spec, and what Medic's API shows of how it was made."""

    model_config = ConfigDict(extra="ignore")

    spec: ServiceSpec
    heartbeat_name: str  # as registered, before the environment prefix
    environment: str | None = None
    created_at: float
    updated_at: float

    @classmethod
    def new(
        cls, spec: ServiceSpec, heartbeat_name: str | None = None, environment: str | None = None
    ) -> Registration:
        """A registration made now."""
        now = time.time()
        return cls(
            spec=spec,
            heartbeat_name=heartbeat_name or spec.slug,
            environment=environment,
            created_at=now,
            updated_at=now,
        )


class ServiceRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._cache: dict[str, tuple[float, Registration]] = {}
        self._unreadable: set[str] = set()
        self._lock = threading.Lock()

    def add(self, registration: Registration) -> bool:
        """Register a service unless its slug is taken; True when it was added. Raises
        :class:`RegistryFullError` at ``MAX_REGISTERED`` services. A registration under the
        slug that no longer reads (see :meth:`all`) is replaced: registering it again is
        how it is mended."""
        slug = registration.spec.slug
        if self.redis.hlen(keys.HEARTBEAT_SERVICES) >= MAX_REGISTERED:
            raise RegistryFullError(f"the registry is full ({MAX_REGISTERED} services)")
        value = registration.model_dump_json()
        added = bool(self.redis.hsetnx(keys.HEARTBEAT_SERVICES, slug, value))
        if not added:
            held = self.redis.hget(keys.HEARTBEAT_SERVICES, slug)
            if held is not None and self._read(slug, str(held)) is None:
                self.redis.hset(keys.HEARTBEAT_SERVICES, slug, value)
                added = True
        self._forget(slug)
        return added

    def replace(self, registration: Registration) -> None:
        """Store a registration's new state (an update, a mute, a deactivation)."""
        slug = registration.spec.slug
        self.redis.hset(keys.HEARTBEAT_SERVICES, slug, registration.model_dump_json())
        self._forget(slug)

    def get(self, slug: str) -> Registration | None:
        """The registration of ``slug``; None when there is none, or it no longer reads."""
        raw = self.redis.hget(keys.HEARTBEAT_SERVICES, slug)
        return None if raw is None else self._read(slug, str(raw))

    def all(self) -> dict[str, Registration]:
        """Every registration that still reads as one. One that does not (registered by an
        older version under rules since tightened) is logged and left out, as if it were
        not registered: every other service stays watched rather than none."""
        raw = cast(dict[str, str], self.redis.hgetall(keys.HEARTBEAT_SERVICES))
        found = {slug: self._read(slug, value) for slug, value in raw.items()}
        return {slug: r for slug, r in found.items() if r is not None}

    def _read(self, slug: str, value: str) -> Registration | None:
        try:
            if not SLUG_PATTERN.fullmatch(slug):
                # Taken once (a name ending in a line break passed Python's `$`): kept in
                # the catalogue, it would stop the checker for every service.
                raise ValueError(f"its name {slug!r} is not a slug")
            return Registration.model_validate(json.loads(value))
        except (ValueError, ValidationError) as exc:
            with self._lock:
                first = slug not in self._unreadable
                self._unreadable.add(slug)
            if first:  # once per process: the checker reads the registry at every check
                logger.error(
                    "registered service %r is not watched: its registration no longer reads "
                    "(%s); register it again (Medic's POST /service), which replaces it",
                    slug[:100],
                    str(exc).replace("\n", " ")[:300],
                )
            return None

    def lookup(self, slug: str) -> ServiceSpec | None:
        """The registered spec for ``slug``, from this process's cache when fresh."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(slug)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1].spec
        registration = self.get(slug)
        if registration is None:
            self._forget(slug)
            return None
        with self._lock:
            self._cache[slug] = (now, registration)
        return registration.spec

    def _forget(self, slug: str) -> None:
        with self._lock:
            self._cache.pop(slug, None)
