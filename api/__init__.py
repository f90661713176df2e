"""The HTTP API: one more producer in front of the same intake as ``tasks.enqueue``
(FastAPI, served by uvicorn: ``gds-notify api``). A 202 means the job is in Redis.

- ``app.py`` builds the application; ``routes/`` holds one module per kind of caller
  (producers, incidents, jobs, dead letters, the GDS ingest, Alertmanager, health probes).
- ``auth.py`` checks bearer tokens, their scopes and each token's request rate;
  ``body_limits.py`` bounds request bodies in size and time; ``errors.py`` turns every
  failure into one JSON shape and status code.
"""
