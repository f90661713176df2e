"""The Celery configuration, derived from the settings in one place.

Why each choice (see ../shared/reference/celery-on-redis.md):

- JSON only, everywhere: producers in any language, and no pickle from the network.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job is acknowledged only after it
  finished, so a killed worker's job comes back. Delivery is idempotent (job state and
  PagerDuty dedup keys), which late acks require.
- ``task_acks_on_failure_or_timeout``: a task that fails is acknowledged too. A job that
  ends dead fails its task (``DeadLettered``, worker/task_base.py) only after the dead
  letter is recorded, so Flower shows a FAILURE with the reason and the message is never
  run again.
- ``worker_prefetch_multiplier=1``: delivery is slow I/O; a worker holds one job per slot,
  so a page is never stuck behind jobs another worker prefetched.
- One visibility timeout (``CELERY_VISIBILITY_TIMEOUT``) for every producer, worker and
  Flower; every retry delay is capped below it (``Settings.max_delay_seconds``).
- Queues per channel; ``queue_order_strategy="priority"`` makes a worker that serves
  several queues take from ``pagerduty`` first, then intake, then ``email``.
- Results ignored, and no result backend: job state lives in our own Redis records
  (worker/engine/jobs.py); Flower learns each task's state from the workers' task events
  (``worker_send_task_events``), not from a backend.
- ``rediss://``: the broker verifies Redis's certificate, as the job-state client (redis-py)
  on the same URL does. kombu alone would connect to a ``rediss://`` URL without ``ssl_*``
  parameters with CERT_NONE (a warning in the log, and no protection from a man in the
  middle). ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` in the
  URL's query still apply to both clients.
- Beat schedules one task, ``heartbeat.check``, every ``HEARTBEAT_CHECK_INTERVAL`` seconds;
  it expires after one interval, so a backlog of stale checks never builds up.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from kombu.entity import Queue

from config.queues import (
    CHECK_QUEUE,
    CHECK_TASK,
    DELIVERY_TASK,
    INTAKE_QUEUE,
    PAGERDUTY_QUEUE,
    QUEUE_OF,
    QUEUE_ORDER,
)
from config.redis_address import RedisAddress, host_port
from config.settings import Settings


def broker_ssl(address: RedisAddress) -> dict[str, Any] | None:
    """TLS options for the broker: verify the certificate on ``rediss://`` and
    ``rediss+sentinel://`` (the URL's own ``ssl_*`` query parameters override these),
    nothing for ``redis://`` and ``unix://``."""
    if not address.tls:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, **_ssl_options(address)}


def _ssl_options(address: RedisAddress) -> dict[str, Any]:
    return {k: v for k, v in address.options.items() if k.startswith("ssl_")}


def broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL kombu reads, and the transport options it needs besides. A Sentinel
    address becomes kombu's own form, one ``sentinel://`` URL per Sentinel, with the
    master's name and the Sentinels' password as transport options."""
    address = settings.redis_address
    if address.unix:
        return _kombu_socket_url(settings.redis_url), {}
    if not address.sentinel:
        return settings.redis_url, {}
    auth = ""
    if address.password is not None:
        auth = f"{quote(address.username or '', safe='')}:{quote(address.password, safe='')}@"
    url = ";".join(f"sentinel://{auth}{host_port(h, p)}/{address.db}" for h, p in address.sentinels)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
    if address.tls:
        sentinel_kwargs |= {"ssl": True, **(broker_ssl(address) or {})}
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return url, {"master_name": address.master_name, "sentinel_kwargs": sentinel_kwargs}


def _kombu_socket_url(url: str) -> str:
    """redis-py's ``unix://[user:password@]/path?db=N[&password=...]`` as kombu writes a
    socket (it knows no ``unix`` transport): ``redis+socket://[user:password@]/path`` with
    the database as its virtual host."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    password = parts.password if parts.password is not None else query.get("password")
    username = parts.username if parts.username is not None else query.get("username")
    auth = ""
    if password is not None:
        auth = f"{quote(unquote(username or ''), safe='')}:{quote(unquote(password), safe='')}@"
    return f"redis+socket://{auth}{parts.path}?virtual_host={query.get('db', '0')}"


def _watchdog_schedule(settings: Settings) -> dict[str, Any]:
    """The canary, when there is a watchdog to call. It enters at intake, as a producer's
    job does (the default queue), and expires after one interval: a canary stuck behind
    a backlog is what the watchdog must not hear about."""
    if settings.watchdog_url is None:
        return {}
    interval = settings.watchdog_interval
    return {
        "watchdog-canary": {
            "task": "watchdog.canary",
            "schedule": interval,
            "options": {"expires": interval},
        }
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    vt = settings.celery_visibility_timeout
    transport = {
        "visibility_timeout": vt,
        # Sweep for jobs a dead worker held about ten times per visibility timeout (kombu's
        # default is every ~100 s), so recovery takes little more than the timeout itself.
        "unacked_restore_interval": max(1, min(10, vt // 10)),
        "unacked_restore_throttle": 1,
        "queue_order_strategy": "priority",
        "health_check_interval": 10,
        "socket_keepalive": True,
        "socket_connect_timeout": 5,
        # A master that hangs rather than dies (a frozen process, a paused VM, a host gone
        # without a reset) answers nothing: every call on a connection to it waits this
        # long, one pooled connection after another, before the worker asks the
        # Sentinels again. At 30 s no page went out for about 100 s after a failover.
        "socket_timeout": 5,
        "retry_on_timeout": True,
    }
    tls = broker_ssl(settings.redis_address)
    url, sentinel = broker(settings)
    transport |= sentinel
    return {
        "broker_use_ssl": tls if tls is not None else False,  # False is Celery's default
        "broker_url": url,
        # Celery's consumer, but an undecodable message is dead-lettered before it is dropped.
        "worker_consumer": "worker.consumer:Consumer",
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_eta_task_limit": 5000,
        "task_default_queue": INTAKE_QUEUE,
        "task_queues": tuple(
            Queue(name, routing_key=name)  # type: ignore[no-untyped-call]
            for name in QUEUE_ORDER
        ),
        "task_routes": {
            **{
                DELIVERY_TASK[channel]: {"queue": queue, "routing_key": queue}
                for channel, queue in QUEUE_OF.items()
            },
            # The checker decides pages: it must not wait behind an intake or email backlog.
            CHECK_TASK: {"queue": CHECK_QUEUE, "routing_key": CHECK_QUEUE},
            # Recovery may re-queue pages: it runs where pages run.
            "jobs.recover": {"queue": PAGERDUTY_QUEUE, "routing_key": PAGERDUTY_QUEUE},
        },
        "beat_schedule": {
            "jobs-recover": {
                "task": "jobs.recover",
                "schedule": settings.job_recovery_interval,
                "options": {"expires": settings.job_recovery_interval},
            },
            "heartbeat-check": {
                "task": CHECK_TASK,
                "schedule": settings.heartbeat_check_interval,
                # A check that waited longer than one interval is stale: the next is coming.
                "options": {"expires": settings.heartbeat_check_interval},
            },
            **_watchdog_schedule(settings),
        },
        "task_create_missing_queues": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_soft_shutdown_timeout": 10.0,
        "timezone": "UTC",
        "enable_utc": True,
    }
