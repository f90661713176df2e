"""The Redis client for job state (the broker has its own connections, built from the same
address in config/celery_config.py), and what "written" means.

With Sentinel (``redis+sentinel://``), the client asks the Sentinels for the master and
asks again after any connection error, so a failover needs no restart; operations that
fail meanwhile are retried for ``REDIS_RETRY_SECONDS`` (20 s by default with Sentinel, long
enough for an election; 0 for one server, whose outage producers are told about at once).

:func:`replicated` is the durability check: ``WAIT`` after a write, on the same connection,
for ``REDIS_MIN_REPLICAS`` replicas; fewer within ``REDIS_WAIT_TIMEOUT`` raises
:class:`NotReplicatedError` rather than acknowledging what a failover could still undo.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from config.redis_address import RedisAddress
from config.settings import Settings

#: Backoff between retries while Redis is away: quick at first, then once a second.
BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
DEFAULT_SENTINEL_RETRY_SECONDS = 20.0


class MasterFollowingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks where the master is on every socket it
    opens.

    redis-py's own asks only in ``connect()``; a pipeline retried after a connection error
    reconnects through ``connect_check_health()``, whose retries reopen the address it had,
    so during a failover it kept dialling the dead master until its retries ran out (a
    measured 22 s, then an error) while a new master was already serving.
    """

    def _connect(self) -> Any:
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()  # type: ignore[no-untyped-call]


class MasterFollowingSSLConnection(MasterFollowingConnection, SSLConnection):
    """The same over TLS."""


class ScriptReplayingPipeline(Pipeline):
    """A pipeline whose script calls survive a new master.

    redis-py loads a pipeline's scripts before it runs, then retries the whole pipeline
    after a connection error. Retried on a master just promoted (which never saw the
    scripts: Redis does not replicate its script cache), each script call fails with
    NOSCRIPT while the rest runs. The calls that failed so are run again once the scripts
    are loaded, each ``WAIT`` after the first of them with them (it vouches for their
    writes); nothing that did run is run twice.

    The same replay makes redis-py's check before every pipeline (``SCRIPT EXISTS``, a
    round trip each time) unneeded: scripts are loaded when a call meets NOSCRIPT, once
    per server, as a plain script call does.
    """

    _checked = False  # whether load_scripts() may skip its round trip

    def load_scripts(self) -> None:
        if not self._checked:
            super().load_scripts()  # type: ignore[no-untyped-call]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        # The attribute set in __init__, which mypy takes for Redis.transaction().
        if self.transaction or self.explicit_transaction or not self.scripts:  # type: ignore[truthy-function]
            return list(super().execute(raise_on_error))
        stack = list(self.command_stack)
        scripts = set(self.scripts)
        self._checked = True
        try:
            results = list(super().execute(raise_on_error=False))
        finally:
            self._checked = False
        failed = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if failed:
            again = [
                i
                for i in range(failed[0], len(stack))
                if i in failed or str(stack[i][0][0]).upper() == "WAIT"
            ]
            self.scripts = scripts
            for i in again:
                args, options = stack[i]
                self.pipeline_execute_command(*args, **options)
            for i, result in zip(again, super().execute(raise_on_error=False), strict=True):
                results[i] = result
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


class Client(redis.Redis):
    """redis-py's client, with :class:`ScriptReplayingPipeline` pipelines."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return ScriptReplayingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class NotReplicatedError(redis.exceptions.RedisError):
    """A write reached the master but not ``REDIS_MIN_REPLICAS`` replicas in time: it is
    not acknowledged (a failover now could lose it). Retrying with the same idempotency id
    is safe."""

    def __init__(
        self, wanted: int, acked: int, timeout: float, answers: list[Any] | None = None
    ) -> None:
        super().__init__(
            f"written, but confirmed by {acked} of the {wanted} replicas REDIS_MIN_REPLICAS "
            f"asks for within {timeout:g} s; not acknowledged (retry with the same "
            "idempotency id)"
        )
        self.wanted, self.acked = wanted, acked
        #: The write's own results: it did happen, on the master.
        self.answers = answers or []
        #: The job the write created, when it created one (set by the job store).
        self.job_id: str | None = None


def retry_seconds(settings: Settings) -> float:
    """How long an operation is retried while Redis is unreachable."""
    if settings.redis_retry_seconds is not None:
        return settings.redis_retry_seconds
    return DEFAULT_SENTINEL_RETRY_SECONDS if settings.redis_address.sentinel else 0.0


def _retry(seconds: float) -> Retry:
    # About one attempt per second once the backoff reaches its cap.
    return Retry(BACKOFF, retries=math.ceil(seconds) + 5 if seconds > 0 else 1)


def tls_options(address: RedisAddress) -> dict[str, Any]:
    """redis-py's TLS keywords for a Sentinel address (a ``rediss://`` URL carries its own)."""
    if not address.tls:
        return {}
    return {"ssl": True, **{k: v for k, v in address.options.items() if k.startswith("ssl_")}}


def connect(settings: Settings, **overrides: Any) -> redis.Redis:
    """A thread-safe client (a connection pool) on the master, answering ``str``."""
    address = settings.redis_address
    options: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 10,
        "socket_keepalive": True,
        "socket_connect_timeout": 3,
        "socket_timeout": max(10.0, settings.redis_wait_timeout + 5),
        "retry": _retry(retry_seconds(settings)),
        "retry_on_timeout": True,
        **overrides,
    }
    if address.unix:
        options.pop("socket_keepalive")  # a TCP option: redis-py's socket connection refuses it
    if not address.sentinel:
        return Client.from_url(address.url, **options)
    master: redis.Redis = sentinel_for(settings).master_for(  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2
        address.master_name,
        redis_class=Client,
        connection_class=MasterFollowingSSLConnection if address.tls else MasterFollowingConnection,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
        # The connection class is the TLS switch here: redis-py would pass ``ssl`` on to it.
        **{k: v for k, v in tls_options(address).items() if k != "ssl"},
    )
    return master


#: How long a quick answer waits for Redis (a scrape, a readiness check): well inside
#: Prometheus' default scrape timeout of 10 s, so a hung Redis reads as down.
QUICK_TIMEOUT_SECONDS = 3.0


def connect_quick(settings: Settings) -> redis.Redis:
    """A client that gives up after :data:`QUICK_TIMEOUT_SECONDS`, once, instead of
    retrying: for answers that must come whether or not Redis does."""
    return connect(
        settings,
        socket_timeout=QUICK_TIMEOUT_SECONDS,
        socket_connect_timeout=QUICK_TIMEOUT_SECONDS,
        retry=Retry(BACKOFF, retries=0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def sentinel_for(settings: Settings) -> Sentinel:
    """The Sentinels of ``REDIS_URL``."""
    address = settings.redis_address
    secret = settings.redis_sentinel_password
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": 2,
        "socket_timeout": 2,
        **tls_options(address),
    }
    if secret is not None:
        sentinel_options["password"] = secret.get_secret_value()
    return Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2


def replicated(results: list[Any], wanted: int, timeout: float) -> list[Any]:
    """The results of a pipeline that ended with ``WAIT wanted timeout``, without it;
    :class:`NotReplicatedError` when fewer replicas confirmed."""
    *answers, acked = results
    if int(acked) < wanted:
        raise NotReplicatedError(wanted, int(acked), timeout, answers)
    return answers
