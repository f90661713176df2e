"""What a delivery task carries, as every door queues it and the delivery step reads it."""

from __future__ import annotations

from typing import Any, Literal

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
    #: An email to its ``email_to`` alone, past the routing rules: the resend to addresses
    #: a server refused (worker/engine/refused_recipients.py), whose dead letter's replay
    #: goes to those addresses too.
    resend: bool = False
    #: An email replayed from a dead letter: the job whose message it sends again, the
    #: first of the chain. Its Message-ID is that job's, so a receiver that had the
    #: message already (the answer to it was lost) drops the copy.
    message_of: str | None = None
    #: A replay: what it replays (the job, or an intake letter's id, as its record names
    #: it), and when the first job of the chain was accepted: the page's timestamp, not the
    #: replay's time (``enqueued_at``, from which its own retries are timed, and its
    #: email's Date).
    replay_of: str | None = None
    first_accepted_at: float | None = None

    @property
    def accepted_at(self) -> float:
        """When what this job sends was first accepted: a retried or replayed page says
        when its alert was raised, not when it finally went out."""
        return self.first_accepted_at or self.enqueued_at

    def payload(self) -> dict[str, Any]:
        """The job as its message, its record and its dead letter carry it (``resend`` and
        the replay's fields only when set, so that a worker of the release before reads
        every other)."""
        unset = {"resend"} if not self.resend else set()
        unset.update(
            name
            for name in ("message_of", "replay_of", "first_accepted_at")
            if getattr(self, name) is None
        )
        return self.model_dump(mode="json", exclude=unset or None)
