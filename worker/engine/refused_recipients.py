"""Recipients an SMTP server refused while it took the message for the others.

The job counts as delivered (its message went out), but nobody refused is forgotten: a
refusal that may pass (4xx: a full mailbox, greylisting) is sent again to those
addresses as a job of its own, with the retries and the dead letter every job has; one
that will not (5xx: no such mailbox) is dead-lettered with the server's answer, for a
replay once the address is mended. The job's result names both.
"""

from __future__ import annotations

import hashlib
import logging

from worker.channels import Channel
from worker.engine import intake
from worker.engine.delivery_job import DeliveryJob
from worker.engine.runtime import Engine
from worker.job_request import JobRequest

logger = logging.getLogger(__name__)

#: The source the job that sends again is counted under (``notifications_total``).
SOURCE = "refused"


def follow_up(engine: Engine, job: DeliveryJob, refused: dict[str, str]) -> dict[str, str]:
    """Send again to the addresses ``refused`` for now, dead-letter those refused for
    good (``refused`` maps each address to the server's answer, ``"450 …"``); returns
    what the job's result adds: ``resent_as`` (the new job's id) and ``refused_dead_letter``.
    Either goes to those addresses alone, never to the rest of a routing rule's list.
    Done twice for one job (its worker died before recording it), it makes one job and
    one dead letter: both are named after the job."""
    assert job.notification is not None  # an email with no notification is never sent
    later = {address: why for address, why in refused.items() if why.startswith("4")}
    never = {address: why for address, why in refused.items() if address not in later}
    added: dict[str, str] = {}
    # The dead letter first: it cannot fail on what the resend's validation might.
    if never:
        entry_id = f"{job.job_id}-email-refused"
        to = ", ".join(never)
        notification = job.notification.model_copy(update={"recipient": to})
        update = {"notification": notification, "email_to": to, "resend": True}
        payload = job.model_copy(update=update).payload()  # replayed to them alone
        reason = "refused by the SMTP server: " + "; ".join(f"{a} ({w})" for a, w in never.items())
        engine.dead_letters.add(
            entry_id=entry_id,
            job_id=job.job_id,
            channel=Channel.EMAIL.value,
            reason=reason,
            payload=payload,
            attempts=1,
            last_error={"type": "NotificationDeliveryError", "message": reason},
        )
        added["refused_dead_letter"] = entry_id
    if later:
        to = ", ".join(later)
        fields = job.notification.model_dump() | {"recipient": to, "channel": Channel.EMAIL}
        fields |= {"idempotency_id": _resend_id(job.job_id), "team": job.team}
        request = JobRequest.model_validate(fields)
        again = intake.resend(engine, request, to, intake.new_job_id(), SOURCE)
        added["resent_as"] = again.job_id
    logger.warning(
        "job %s email: %d recipient(s) refused for now%s, %d for good%s",
        job.job_id,
        len(later),
        f" (sent again as job {added['resent_as']})" if later else "",
        len(never),
        f" (dead letter {added['refused_dead_letter']})" if never else "",
    )
    return added


def _resend_id(job_id: str) -> str:
    """The idempotency id of the job that sends again to those refused for now: one per
    job, however often the follow-up runs, and short whatever the job's id."""
    return "refused-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
