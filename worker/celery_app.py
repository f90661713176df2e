"""The Celery application: ``celery -A worker worker|beat|flower`` finds it as ``worker.app``.

Configuration comes from config/ when the app is first used (not at import). Every task
runs on :class:`worker.task_base.NotifierTask`, which puts a message back when Redis fails
underneath it.
"""

from __future__ import annotations

from celery import Celery

from config.celery_config import celery_config
from config.settings import get_settings
from worker import broker_transport, niceness, presence

# redis:// and rediss:// mean kombu's Redis transport, hardened so that a queue item that
# is not a message is dead-lettered instead of stopping the worker.
broker_transport.install()

app = Celery(
    "gds_notification",
    task_cls="worker.task_base:NotifierTask",
    # Task events from the thread pool are never dropped (worker/consumer.py), so Flower
    # sees every task end.
    events="worker.consumer:AppEvents",
    include=[
        "tasks.intake",
        "tasks.delivery",
        "tasks.heartbeats",
        "tasks.poison",
        "tasks.recovery",
    ],
)

niceness.install(app)  # the worker's --nice option
presence.install(app)  # each worker says it is up, for /readyz and the metrics

# A promise: read when the configuration is first needed. (Updating ``conf`` from an
# ``on_configure`` handler instead re-enters configuration loading and recurses.)
app.add_defaults(lambda: celery_config(get_settings()))
