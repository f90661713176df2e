"""How a task run ends in Celery's terms, and how that reaches Flower: an outcome settles
as success, retry or a DeadLettered failure; no task event is dropped by a flush running
while a pool thread sends one. (End to end, with a real worker and Flower: test_flower.py.)"""

from __future__ import annotations

import inspect
import pickle
import threading
from typing import Any

import pytest
from celery.events.dispatcher import EventDispatcher as CeleryEventDispatcher
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.events import Events as EventsStep

from worker import consumer
from worker.consumer import EventDispatcher
from worker.engine.delivery import Outcome, OutcomeKind
from worker.task_base import DeadLettered, NotifierTask

REASON = "permanent error: PagerDuty rejected event: Invalid routing key"


def test_dead_lettered_carries_the_reason_pickles_and_is_an_expected_failure() -> None:
    exc = DeadLettered(REASON)
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert type(again) is DeadLettered
    assert again.reason == REASON
    assert str(again) == REASON
    assert repr(again) == f"DeadLettered({REASON!r})"  # what Flower shows as the exception
    # Logged by Celery at INFO in one line, not at ERROR with a traceback.
    assert issubclass(DeadLettered, NotifierTask.throws)


def test_outcomes_settle_in_one_place() -> None:
    from tasks.delivery import deliver_pagerduty

    assert deliver_pagerduty.settle(Outcome(OutcomeKind.DELIVERED)) == "delivered"
    assert deliver_pagerduty.settle(Outcome(OutcomeKind.SKIPPED, reason="delivered")) == "skipped"
    with pytest.raises(DeadLettered, match="Invalid routing key"):
        deliver_pagerduty.settle(Outcome(OutcomeKind.DEAD, reason=REASON))


class _Producer:
    """Stands in for kombu's producer (the dispatcher calls only ``publish``): records each
    batch, and on the first one lets another thread send an event, as a pool thread
    finishing a task does while the event loop publishes."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.during_first: Any = None

    def publish(self, body: Any, **_: Any) -> None:
        self.batches.append([event["type"] for event in body])
        if self.during_first is not None:
            run, self.during_first = self.during_first, None
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()


def _dispatcher(cls: type[Any]) -> tuple[Any, _Producer]:
    from worker import app

    dispatcher = cls(app=app, connection=None, enabled=False, buffer_group=["task"])
    producer = _Producer()
    dispatcher.producer = producer
    dispatcher.enabled = True
    return dispatcher, producer


def test_an_event_sent_during_a_flush_goes_out_with_the_next_flush() -> None:
    dispatcher, producer = _dispatcher(EventDispatcher)
    dispatcher.send("task-received", uuid="a")
    producer.during_first = lambda: dispatcher.send("task-succeeded", uuid="a")
    dispatcher.flush()
    dispatcher.flush()
    dispatcher.flush()  # nothing left: nothing published
    assert producer.batches == [["task-received"], ["task-succeeded"]]


def test_celerys_own_dispatcher_still_drops_it() -> None:
    """Why worker.consumer.EventDispatcher exists (Celery issue 10434). When this fails,
    the Celery in use no longer drops the event, and the override can go."""
    dispatcher, producer = _dispatcher(CeleryEventDispatcher)
    dispatcher.send("task-received", uuid="a")
    producer.during_first = lambda: dispatcher.send("task-succeeded", uuid="a")
    dispatcher.flush()
    dispatcher.flush()
    assert ["task-succeeded"] not in producer.batches


def test_an_event_that_fails_to_publish_again_is_kept_for_the_next_flush() -> None:
    dispatcher, producer = _dispatcher(EventDispatcher)
    failures = [ConnectionError("broker away"), ConnectionError("still away")]

    def flaky(body: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop(0)
        _Producer.publish(producer, body, **kwargs)

    producer.publish = flaky  # type: ignore[method-assign]
    dispatcher.send("task-failed", uuid="a")
    dispatcher.flush()  # fails: buffered while offline
    dispatcher.flush()  # fails again: still buffered
    dispatcher.flush()
    assert producer.batches == [["task-failed"]]


def test_what_the_overrides_rely_on_inside_celery_is_still_there() -> None:
    """As tests/test_kombu_internals.py does for the transport: if Celery renames what
    worker/consumer.py overrides, this fails first, naming it."""
    from worker import app

    assert isinstance(app.events.Dispatcher(enabled=False), EventDispatcher)
    for base, ours, name, parameters in [
        (CeleryEventDispatcher, EventDispatcher, "flush", ["self", "errors", "groups"]),
        (CeleryConsumer, consumer.Consumer, "on_send_event_buffered", ["self"]),
    ]:
        theirs = getattr(base, name, None)
        assert theirs is not None, f"{base.__qualname__}.{name} is gone"
        assert list(inspect.signature(theirs).parameters) == parameters
        assert list(inspect.signature(ours.__dict__[name]).parameters) == parameters
    assert list(inspect.signature(CeleryEventDispatcher._publish).parameters)[:4] == [
        "self",
        "event",
        "producer",
        "routing_key",
    ]
    assert callable(CeleryConsumer._flush_events)
    step = inspect.getsource(EventsStep.start)
    assert "buffer_group=['task']" in step
    assert "on_send_buffered=c.on_send_event_buffered" in step
