"""The Celery application: ``celery -A worker worker|beat|flower`` finds it as ``worker.app``.

Configuration comes from config/ when the app is first used (not at import), so importing
the providers never needs a broker or valid queue settings.
"""

from __future__ import annotations

from celery import Celery

from config.celery_config import celery_config
from config.settings import Settings, get_settings

app = Celery("gds_notification", include=["tasks.intake", "tasks.delivery", "tasks.heartbeats"])


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
    # Broker connections are pooled on first use; a pool made for the old settings would
    # keep publishing to the old REDIS_URL (the job records would go to the new one).
    app._pool = None
    app.amqp._producer_pool = None
    reset_redis()
    reset_limiter()
    reset_providers()
    reset_catalogue()
