"""The queues and task names on the wire: what producers, the engine and Celery agree on.

Each channel has its own queue and delivery task; ``celery`` (Celery's default queue) is
where ``send_task("notify", ...)`` lands when it names none.
"""

from __future__ import annotations

from worker.channels import Channel

INTAKE_QUEUE = "celery"
PAGERDUTY_QUEUE = "pagerduty"
EMAIL_QUEUE = "email"
#: Consumption order for a worker serving every queue: pages first.
QUEUE_ORDER = (PAGERDUTY_QUEUE, INTAKE_QUEUE, EMAIL_QUEUE)

#: The tasks producers send to the intake queue with any Celery client.
NOTIFY_TASK = "notify"
HEARTBEAT_TASK = "heartbeat"
INTAKE_TASKS = (NOTIFY_TASK, HEARTBEAT_TASK)

QUEUE_OF = {Channel.PAGERDUTY: PAGERDUTY_QUEUE, Channel.EMAIL: EMAIL_QUEUE}
DELIVERY_TASK = {Channel.PAGERDUTY: "deliver.pagerduty", Channel.EMAIL: "deliver.email"}
#: The heartbeat check decides pages: it runs where pages run, never behind email.
CHECK_TASK = "heartbeat.check"
CHECK_QUEUE = PAGERDUTY_QUEUE
