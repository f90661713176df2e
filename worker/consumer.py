"""The worker's message consumer and its event dispatcher: Celery's own, except that

- a message whose body cannot be decoded, that names no registered task, or that Celery
  rejects (wrong content type, a body that is not JSON) is dead-lettered, with the reason,
  before Celery drops it, and shown in Flower as a failed task with that reason (Celery
  itself announces an unknown task as failed, with ``NotRegistered``); a message whose
  letter Redis would not keep at that moment is put back instead of dropped, to be
  dead-lettered when it is taken again;
- a task message of a shape Celery cannot take (worker/task_message_check.py), or one
  that Celery fails to take in for any other reason, is dead-lettered the same way and
  acknowledged, instead of stopping the worker (and, put back, every worker after it);
- no task event is lost when tasks run on the thread pool (``-P threads``, as the
  Procfile runs them).

Celery buffers task events and its event loop flushes them, but the thread pool sends a
task's ``task-started`` and ``task-succeeded``/``task-failed`` from the pool's thread.
Celery's flush publishes the buffer and then empties it, dropping whatever a pool thread
added during the publish; a short task (``heartbeat.check`` runs in about a millisecond)
then stays RECEIVED in Flower for good although the worker logged it done
(celery/celery#10434; fixed upstream after 5.6.3, and this project holds Celery below
5.7). :class:`EventDispatcher` removes only what it published, and :class:`Consumer` asks
the event loop for a flush in the thread-safe way, which also wakes the loop instead of
leaving the events until its next timer.

The consumer is ``worker_consumer`` in config/celery_config.py; the dispatcher comes with
the app's ``events`` (worker/celery_app.py).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.app.events import Events as CeleryEvents
from celery.events.dispatcher import EventDispatcher as CeleryEventDispatcher
from celery.worker.consumer import Consumer as CeleryConsumer

from worker.engine.quarantine import carried_id, message_copy, quarantine
from worker.engine.runtime import engine
from worker.task_message_check import EXPIRED, task_message_problem
from worker.task_request import keep_expired

logger = logging.getLogger(__name__)

#: Headers come from any producer: what is echoed of them into an event is bounded.
_HEADER_CHARS = 255


def announce_failure(consumer: Any, message: Any, reason: str) -> None:
    """Send a ``task-failed`` event with ``reason`` for a task message no task could run,
    when its headers name the task: such a message is never received as a task, so Flower
    would otherwise not show it at all. Never raises (the consumer must carry on)."""
    headers = getattr(message, "headers", None) or {}
    task_id, name = headers.get("id"), headers.get("task")
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if not (isinstance(task_id, str) and isinstance(name, str)) or dispatcher is None:
        return
    try:
        dispatcher.send(
            "task-failed",
            uuid=task_id[:_HEADER_CHARS],
            name=name[:_HEADER_CHARS],
            exception=reason[:1000],
        )
    except Exception:
        logger.exception("could not announce the failed message %r", task_id[:_HEADER_CHARS])


def _undecodable(exc: BaseException | None) -> str:
    detail = f"{type(exc).__name__}: {exc}" if exc else "rejected by the consumer"
    return f"undecodable message: {detail}"


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, dead-lettering what no task can run and flushing events safely."""

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        reason = _undecodable(exc)
        if self._kept(message, reason):
            announce_failure(self, message, reason)
            super().on_decode_error(message, exc)  # acknowledges it

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if self._kept(message, _undecodable(None)):
            announce_failure(self, message, _undecodable(None))
            super().on_unknown_message(body, message)  # acknowledges it

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        headers = getattr(message, "headers", None)
        name = headers.get("task") if isinstance(headers, dict) else None
        if name is None and isinstance(body, dict):  # Celery's first message protocol
            name = body.get("task")
        reason = f"unknown task {name!r}: no worker task has this name"
        if self._kept(message, reason):
            super().on_unknown_task(body, message, exc)  # acknowledges it, announces it

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        if self._kept(message, _undecodable(exc)):
            announce_failure(self, message, _undecodable(exc))
            super().on_invalid_task(body, message, exc)  # acknowledges it

    def _kept(self, message: Any, reason: str) -> bool:
        """Dead-letter ``message`` (Celery acknowledges it next). When Redis would not keep
        the letter, the message is put back instead, and False: acknowledged, it would be
        gone with no letter; taken again, it is dead-lettered then. (With Redis
        unreachable the put-back fails too, and the message returns from the unacked
        set after the visibility timeout.)"""
        headers = getattr(message, "headers", None)
        if quarantine(engine().dead_letters, reason, message_copy(message), carried_id(headers)):
            return True
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors, requeue=True)
        return False

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        take = super().create_task_handler(*args, **kwargs)
        horizon = float(self.app.conf.broker_transport_options.get("visibility_timeout", 3600))
        broker_errors = tuple(self.connection_errors) + tuple(self.channel_errors)

        def on_task_received(message: Any) -> None:
            try:
                problem = task_message_problem(self.app, message, horizon)
                if problem is None:
                    take(message)
                    return
            except broker_errors:
                raise  # the connection's trouble, not the message's: Celery reconnects
            except Exception as exc:
                problem = f"Celery could not take it: {type(exc).__name__}: {exc}"
            self.on_untakeable(message, problem)

        return on_task_received

    def on_untakeable(self, message: Any, problem: str) -> None:
        """Dead-letter a task message Celery cannot take, and acknowledge it."""
        if problem.startswith(EXPIRED) and self._kept_expired(message, problem):
            return
        reason = f"unrunnable task message: {problem}"
        if not self._kept(message, reason):
            return
        announce_failure(self, message, reason)
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors, requeue=False)

    def _kept_expired(self, message: Any, problem: str) -> bool:
        """An expired ``notify`` kept as its notification (replayable), and acknowledged;
        put back when Redis would not keep it. False when its body is not one to keep
        that way (it is kept as a message instead)."""
        try:
            args, kwargs, _ = message.decode()
        except Exception:  # not a body to read: kept as the message it is
            return False
        try:
            if not keep_expired(message.headers["id"], args, kwargs, problem):
                return False
        except redis.RedisError:
            logger.exception("an expired notify could not be kept: put back")
            message.reject_log_error(logger, self.connection_errors, requeue=True)
            return True
        except Exception:
            # Not Redis but the notification: it would fail so each time it came back, and
            # go round for ever. Kept as the message it is instead.
            logger.exception("an expired notify could not be kept as its notification")
            return False
        announce_failure(self, message, f"unrunnable task message: {problem}")
        message.ack_log_error(logger, self.connection_errors)
        return True

    def on_send_event_buffered(self) -> None:
        # Called from pool threads too. Celery adds to the hub's ready set directly, which
        # can race the loop taking that set and does not wake a loop asleep in its poll.
        if self.hub:
            self.hub.call_soon(self._flush_events)


class EventDispatcher(CeleryEventDispatcher):  # type: ignore[misc]
    """Celery's event dispatcher, safe for events sent from other threads while it
    flushes: an event buffered during a publish stays for the next flush, and an event
    that fails to publish again stays in the outbound buffer."""

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        """Publish the events buffered so far, removing only those published."""
        with self.mutex:
            if errors:
                # One pass over what is there now; a failed publish puts its event back.
                for _ in range(len(self._outbound_buffer)):
                    event, routing_key, _exc = self._outbound_buffer.popleft()
                    self._publish(event, self.producer, routing_key)
            if groups:
                for group, events in list(self._group_buffer.items()):
                    # A copy, and only its length removed afterwards: another thread may
                    # append meanwhile (appends only add at the end, only a flush removes).
                    batch = events[:]
                    if batch:
                        self._publish(batch, self.producer, f"{group}.multi")
                        del events[: len(batch)]


class AppEvents(CeleryEvents):  # type: ignore[misc]
    """``app.events`` with :class:`EventDispatcher` (``events`` in worker/celery_app.py)."""

    dispatcher_cls = "worker.consumer:EventDispatcher"
