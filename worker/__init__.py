"""Everything that runs inside a worker process: the Celery app, providers, exceptions,
job records, idempotency, the shared rate limiter, the retry policy and dead letters.

``celery -A worker worker`` loads ``worker.app``.
"""

from worker.celery_app import app

__all__ = ["app"]
