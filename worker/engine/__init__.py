"""The engine: everything that makes a notification arrive once, with no Celery in it.

Job records and delivery claims (``jobs``), idempotency, the shared rate limiter, the
retry policy, one delivery step that returns an outcome (``delivery``), intake, dead
letters, recovery of deliveries the broker lost, and heartbeat monitoring
(``heartbeats/``). ``runtime.Engine`` holds one process's Redis client and stores; the
Celery layer (``worker.celery_app``, ``tasks/``) only turns outcomes into acks and retries.
"""
