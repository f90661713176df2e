"""Task messages (deliveries, an early heartbeat check), written as Celery's workers read
them: task protocol 2, JSON, in the envelope kombu's Redis transport keeps in a queue's
list.

The engine writes them itself, in the script that records the job (jobs.py), so a job is
never recorded without its messages nor queued without its record, and a producer pays
one round trip instead of Celery's publish (which also renders the arguments for Flower
and publishes a task-sent event). tests/test_messages.py checks each field against the
message Celery's own ``send_task`` writes, and every end-to-end test has a real worker
consume them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from config.queues import CHECK_QUEUE, CHECK_TASK, DELIVERY_TASK, QUEUE_OF
from worker.channels import Channel

#: The third element of a protocol-2 body: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Celery's limit for the rendering of the arguments that Flower shows.
_ARGSREPR_MAX = 1024
_HOST = socket.gethostname()


def delivery_id(job_id: str, channel: Channel) -> str:
    """The message id of a job's delivery on ``channel`` (Celery's task id)."""
    return f"{job_id}-{channel.value}"


def delivery_of(task: str, task_id: str) -> tuple[str, Channel] | None:
    """The job id and channel of a delivery message (``task``, ``task_id``, as Celery's
    request carries them); None for any other task's."""
    for channel, name in DELIVERY_TASK.items():
        suffix = f"-{channel.value}"
        if task == name and task_id.endswith(suffix):
            return task_id[: -len(suffix)], channel
    return None


def delivery_message(channel: Channel, task_id: str, payload: dict[str, Any]) -> tuple[str, str]:
    """The queue and the message that run ``deliver.<channel>`` on ``payload``."""
    queue = QUEUE_OF[channel]
    return queue, task_message(DELIVERY_TASK[channel], task_id, [payload], queue)


def check_message() -> tuple[str, str]:
    """The queue and the message that run a heartbeat check now."""
    return CHECK_QUEUE, task_message(CHECK_TASK, str(uuid.uuid4()), [], CHECK_QUEUE)


def task_message(task: str, task_id: str, args: list[Any], queue: str) -> str:
    """The message that runs ``task`` on ``args`` from ``queue``."""
    body = json.dumps([args, {}, _EMBED], ensure_ascii=False)
    shown = repr(args)
    envelope = {
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": shown
            if len(shown) <= _ARGSREPR_MAX
            else shown[: _ARGSREPR_MAX - 3] + "...",
            "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{_HOST}",
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, ensure_ascii=False)
