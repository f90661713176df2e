"""The engine as one process holds it: the settings, one Redis client, and the stores, the
rate limiter and the providers built on them, once.

Engine code takes an :class:`Engine` as its first argument and never reaches for a global;
:func:`engine` is the process's own (the Celery tasks, the command line and the HTTP API
use it), built on first use from :func:`config.settings.get_settings`, which reads the
environment once.
"""

from __future__ import annotations

import threading
from functools import cached_property

import redis

from config.catalogue import Catalogue, CatalogueFile, ServiceSpec
from config.settings import Settings, get_settings
from worker.engine import keys
from worker.engine.alert_groups import AlertGroups
from worker.engine.broker_queues import BrokerQueues
from worker.engine.dead_letters import DeadLetters
from worker.engine.heartbeats.checker import HeartbeatChecker
from worker.engine.heartbeats.registry import ServiceRegistry
from worker.engine.heartbeats.store import HeartbeatStore
from worker.engine.jobs import JobStore
from worker.engine.lock import Locks
from worker.engine.provider_pool import ProviderPool
from worker.engine.rate_limit import SharedRateLimiter
from worker.engine.redis_client import connect, connect_quick
from worker.engine.retry_policy import RetryPolicy
from worker.engine.workers import Workers


class Engine:
    """Everything below the Celery layer, wired to one Redis client and one set of settings."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else connect(settings)
        self.locks = Locks(self.redis)
        self.jobs = JobStore(self.redis, settings, self.locks)
        self.broker = BrokerQueues(self.redis)
        self.dead_letters = DeadLetters(self.redis)
        self.limiter = SharedRateLimiter(
            self.redis, settings.pagerduty_rate_limit, keys.PAGERDUTY_RATE
        )
        self.ping_limiter = SharedRateLimiter(self.redis, settings.ping_rate_limit, keys.PING_RATE)
        self.retry_policy = RetryPolicy.from_settings(settings)
        self.providers = ProviderPool(settings)
        self.heartbeats = HeartbeatStore(self.redis)
        self.registry = ServiceRegistry(self.redis)
        self.checker = HeartbeatChecker(
            self.redis, self.heartbeats, self.locks, settings.heartbeat_check_interval
        )
        self.workers = Workers(self.redis)
        self.alert_groups = AlertGroups(self.redis)
        self._catalogue_file: CatalogueFile | None = None
        self._catalogue_lock = threading.Lock()

    @cached_property
    def quick_redis(self) -> redis.Redis:
        """A client on the same Redis that answers or fails within seconds (metrics
        scrapes, readiness), where :attr:`redis` retries through a failover."""
        return connect_quick(self.settings)

    def file_catalogue(self) -> Catalogue | None:
        """The catalogue in ``HEARTBEAT_SERVICES_FILE`` (re-read when the file changes), or
        None when it is not set. A file bad from the start keeps its services that validate
        (:meth:`catalogue_refused` says why the rest are not); the first load raises only
        on a file that cannot be read or is not TOML."""
        path = self.settings.heartbeat_services_file
        if path is None:
            return None
        with self._catalogue_lock:
            if self._catalogue_file is None:
                self._catalogue_file = CatalogueFile(path, salvage=True)
            catalogue_file = self._catalogue_file
        return catalogue_file.current()

    def catalogue_refused(self) -> str | None:
        """Why the services file's last edit was refused (the last good catalogue is still
        in force), or None: no file, or its latest version is the one in force."""
        if self.file_catalogue() is None:
            return None
        return self._catalogue_file.last_error if self._catalogue_file else None

    def catalogue(self) -> Catalogue | None:
        """Every monitored service: the file's and those registered at run time (the file
        wins a slug both name); None when there is no file and nothing is registered."""
        registered = {slug: r.spec for slug, r in self.registry.all().items()}
        found = self.file_catalogue()
        if found is None:
            return Catalogue().merged(registered) if registered else None
        return found.merged(registered)

    def service(self, slug: str) -> ServiceSpec | None:
        """One monitored service, found fast enough for every ping: the file first, then
        the registry (cached for a second in this process)."""
        found = self.file_catalogue()
        spec = found.get(slug) if found is not None else None
        return spec if spec is not None else self.registry.lookup(slug)

    def service_by_ping_uuid(self, uuid: str) -> ServiceSpec | None:
        """The file's service that Healthchecks' ``/ping/{uuid}`` URLs name, or None."""
        found = self.file_catalogue()
        return found.by_ping_uuid(uuid) if found is not None else None

    def close(self) -> None:
        """Close the providers' connections and the Redis client."""
        self.providers.close()
        self.redis.close()


_lock = threading.Lock()
_current: Engine | None = None


def engine() -> Engine:
    """This process's engine: built on first use from the process's settings, and again
    only if those are replaced (``get_settings.cache_clear()``, which tests do)."""
    global _current
    settings = get_settings()
    current = _current
    if current is not None and current.settings is settings:
        return current
    with _lock:
        if _current is None or _current.settings is not settings:
            _current = Engine(settings)
        return _current
