"""The worker's message consumer: Celery's own, except that a message whose body cannot
be decoded is dead-lettered (with the decoder's complaint) before Celery drops it.
Configured as ``worker_consumer`` in config/celery_config.py."""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from worker.engine.quarantine import message_copy, quarantine
from worker.engine.runtime import engine


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        quarantine(
            engine().dead_letters,
            f"undecodable message: {type(exc).__name__}: {exc}",
            message_copy(message),
        )
        super().on_decode_error(message, exc)
