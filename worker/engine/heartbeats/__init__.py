"""Heartbeat monitoring: services report that they are alive; a silent one is paged.

- :mod:`worker.engine.heartbeats.store`: heartbeats in Redis, bounded per service.
- :mod:`worker.engine.heartbeats.reports`: a heartbeat arriving, validated or refused.
- :mod:`worker.engine.heartbeats.evaluation`: the per-service state machine (pure).
- :mod:`worker.engine.heartbeats.checker`: the guarded, atomic evaluation of every service.

The catalogue of services lives in :mod:`config.catalogue`; the Celery tasks
(``heartbeat``, ``heartbeat.check``) in :mod:`tasks.heartbeats`.
"""
