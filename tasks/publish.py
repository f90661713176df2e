"""Publishing a delivery message on its channel's queue: the engine's Publisher, in Celery."""

from __future__ import annotations

from typing import Any

from config.celery_config import EMAIL_QUEUE, PAGERDUTY_QUEUE
from worker.celery_app import app
from worker.channels import Channel

QUEUE_OF = {Channel.PAGERDUTY: PAGERDUTY_QUEUE, Channel.EMAIL: EMAIL_QUEUE}


def publish(channel: Channel, task_id: str, payload: dict[str, Any]) -> None:
    """Send ``payload`` to the ``deliver.<channel>`` task on the channel's queue."""
    queue = QUEUE_OF[channel]
    app.send_task(
        f"deliver.{channel.value}",
        args=[payload],
        queue=queue,
        routing_key=queue,
        task_id=task_id,
    )
