"""The Celery application: ``celery -A worker worker|beat|flower`` finds it as ``worker.app``.

Configuration comes from config/ when the app is first used (not at import), so importing
the providers never needs a broker or valid queue settings.
"""

from __future__ import annotations

from celery import Celery

from config.celery_config import celery_config
from config.settings import Settings, get_settings
from worker import broker_transport, niceness

# redis:// and rediss:// mean kombu's Redis transport, hardened so that a queue item that
# is not a message is dead-lettered instead of stopping the worker.
broker_transport.install()

app = Celery(
    "gds_notification",
    include=[
        "tasks.intake",
        "tasks.delivery",
        "tasks.heartbeats",
        "tasks.poison",
        "tasks.recovery",
    ],
)


niceness.install(app)  # the worker's --nice option


# A promise: read when the configuration is first needed. (Updating ``conf`` from an
# ``on_configure`` handler instead re-enters configuration loading and recurses.)
app.add_defaults(lambda: celery_config(get_settings()))


def configure(settings: Settings) -> None:
    """Re-apply configuration (tests and the dev stack change settings at run time)."""
    from config.catalogue import reset_catalogue
    from worker.provider_pool import reset_providers
    from worker.rate_limit import reset_limiter
    from worker.redis_store import reset_redis

    app.conf.update(celery_config(settings))
    _drop_broker_connections()
    reset_redis()
    reset_limiter()
    reset_providers()
    reset_catalogue()


def _drop_broker_connections() -> None:
    """Forget pooled broker connections, so the next send uses the broker now configured.

    Celery builds its connection and producer pools once, from the broker URL of the
    moment; without this a changed ``REDIS_URL`` would keep publishing to the old Redis.
    (The old pools are left to kombu's registry, not closed: it would hand them out again.)
    """
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
