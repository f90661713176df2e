"""What a delivery task carries, as every door queues it and the delivery step reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from worker.channels import Channel
from worker.notification import Notification


class DeliveryJob(BaseModel):
    """What a delivery task carries: never a secret, only the team that names one."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    channel: Channel
    action: Literal["trigger", "acknowledge", "resolve", "send", "canary"]
    notification: Notification | None = None
    dedup_key: str | None = None
    team: str | None = None
    email_to: str | None = None
    enqueued_at: float
