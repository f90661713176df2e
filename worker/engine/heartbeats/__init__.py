"""Heartbeat monitoring: services report that they are alive; a silent one is paged.

- :mod:`worker.engine.heartbeats.store`: pings in Redis (heartbeats, failures, starts and
  log lines), bounded per service, with each service's recent log.
- :mod:`worker.engine.heartbeats.reports`: a ping arriving, validated or refused.
- :mod:`worker.engine.heartbeats.registry`: services registered at run time.
- :mod:`worker.engine.heartbeats.evaluation`: the per-service state machine (pure).
- :mod:`worker.engine.heartbeats.checker`: the guarded, atomic evaluation of every service.
- :mod:`worker.engine.heartbeats.paging`: a check run, its pages queued.

The catalogue file lives in :mod:`config.catalogue`; the Celery tasks (``heartbeat``,
``heartbeat.check``) in :mod:`tasks.heartbeats`; Medic's and Healthchecks' HTTP calls in
:mod:`api.routes.medic` and :mod:`api.routes.pings`.
"""
