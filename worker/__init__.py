"""What runs inside a worker process, in layers that import one way (README, Architecture):
the domain core (``notification``, ``channels``, ``job_request``, ``addresses``,
``exceptions``, ``redact``), ``providers/``, the ``engine/`` (no Celery in it), and the
Celery layer (``celery_app``, ``task_base``, ``broker_transport``, ``consumer``).

``celery -A worker worker|beat|flower`` finds the app as ``worker.app``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # `worker.app` is built on first use: importing the providers or the engine must not
    # cost Celery's imports (about 0.3 s), nor build a Celery app.
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
