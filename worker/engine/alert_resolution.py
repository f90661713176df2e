"""An alert that resolved (Alertmanager's ``resolved``): the incident its firing opened is
resolved, and an email says so where the firing alert emailed. Shared by the webhook and
by the replay of its dead letter, so a resolved alert replayed never pages."""

from __future__ import annotations

from config.routing import route
from worker.channels import Channel
from worker.engine import intake, keys
from worker.engine.runtime import Engine
from worker.job_request import JobRequest


def resolve(
    engine: Engine,
    firing: JobRequest,
    dedup_key: str,
    source: str,
    resolution: str | None = None,
    job_id: str | None = None,
) -> list[intake.Accepted]:
    """Queue what ``firing`` (the notification the alert was while it fired) resolving
    means, by the routing rules: a resolve of ``dedup_key`` where it paged, a
    ``[RESOLVED]`` email where it emailed. ``resolution`` names this resolution (the
    alert's ``endsAt``): the same one sent again queues nothing. The firing's idempotency
    id is given up, so the alert firing again from the same start (a Prometheus that was
    silent past Alertmanager's resolve_timeout, then back with its ``for`` state) pages
    again rather than being taken for a repeat. Raises :class:`InvalidJobError` as intake
    does. A replay (no ``resolution``) gives nothing up; it names its ``job_id``, from
    which the email's is derived, so replaying it again queues nothing new."""
    rule = route(
        engine.settings.routing_rules, firing.priority, firing.team, firing.alert_name, None
    )
    once = f"{firing.idempotency_id}/{resolution}" if firing.idempotency_id and resolution else None
    done = []
    if Channel.PAGERDUTY in rule.channels:
        claim = f"{once}/resolve" if once else None
        done.append(
            intake.lifecycle_once(engine, "resolve", dedup_key, firing.team, source, claim, job_id)
        )
    if Channel.EMAIL in rule.channels:
        resolved = firing.model_copy(
            update={
                "subject": f"[RESOLVED] {firing.subject}",
                # A firing without an id gives its email none: "None/resolved" made every
                # such email a copy of the first within the TTL, and it was never sent.
                "idempotency_id": (
                    f"{once or firing.idempotency_id}/resolved"
                    if once or firing.idempotency_id
                    else None
                ),
                "channel": Channel.EMAIL,
            }
        )
        # Where the alert also paged, its resolve is queued already: the email is not
        # refused at the door for its own sake, but dead-lettered with the reason.
        paged = Channel.PAGERDUTY in rule.channels
        email_id = intake.derived_job_id(job_id, "resolved") if job_id else intake.new_job_id()
        done.append(intake.accept(engine, resolved, email_id, source, check_email=not paged))
    if once is not None and not all(d.duplicate for d in done):
        # Only for a resolution seen for the first time: a copy of an old one, arriving
        # after the alert fired again from the same start, must not free that firing's id.
        engine.redis.delete(keys.idempotency(str(firing.idempotency_id)))
    return done
