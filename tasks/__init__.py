"""The Celery tasks and the Python producer API.

Producers::

    import tasks
    job_id = tasks.enqueue(notification, team="dba")     # validates, dedupes, routes
    tasks.acknowledge("alert-12345", team="dba")
    tasks.resolve("alert-12345", team="dba")
    tasks.heartbeat("billing-api")                        # a monitored service is alive

Tasks on the wire: ``notify`` (intake, any language), ``deliver.pagerduty``,
``deliver.email``, ``heartbeat`` (any language), ``heartbeat.check`` and ``jobs.recover``
(beat). Tasks are thin: they call the engine (worker/engine/) and settle its outcome as a
task state (:meth:`worker.task_base.NotifierTask.settle`): a retry, a success, or a
failure naming the dead letter's reason.
"""

from tasks.producer import acknowledge, enqueue, heartbeat, replay, resolve
from worker.engine.heartbeats.reports import InvalidHeartbeatError
from worker.job_request import InvalidJobError, JobRequest, json_schema

__all__ = [
    "InvalidHeartbeatError",
    "InvalidJobError",
    "JobRequest",
    "acknowledge",
    "enqueue",
    "heartbeat",
    "json_schema",
    "replay",
    "resolve",
]
