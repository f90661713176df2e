"""An alert that resolved (Alertmanager's ``resolved``): the incident its firing opened is
resolved, and an email says so where the firing alert emailed. Shared by the webhook and
by the replay of its dead letter, so a resolved alert replayed never pages."""

from __future__ import annotations

from collections.abc import Iterable

from config.routing import route
from worker.channels import Channel
from worker.engine import intake, keys
from worker.engine.runtime import Engine
from worker.job_request import JobRequest
from worker.notification import NotificationPriority


def resolve(
    engine: Engine,
    firing: JobRequest,
    dedup_key: str,
    source: str,
    resolution: str | None = None,
    fired_as: Iterable[str] = (),
    fired_at: Iterable[NotificationPriority] = (),
    fired_for: Iterable[str | None] = (),
) -> list[intake.Accepted]:
    """Queue what ``firing`` (the notification the alert was while it fired) resolving
    means, by the routing rules: a resolve of ``dedup_key`` where it paged, a
    ``[RESOLVED]`` email where it emailed. ``resolution`` names this resolution (the
    alert's ``endsAt``): the same one sent again queues nothing. The firing's idempotency
    id is given up, so the alert firing again from the same start (a Prometheus that was
    silent past Alertmanager's resolve_timeout, then back with its ``for`` state) pages
    again rather than being taken for a repeat. Raises :class:`InvalidJobError` as intake
    does. A replay (no ``resolution``) gives nothing up.

    A group fires under several ids, priorities and teams as its alerts come and go:
    ``fired_as`` are the further ids, given up with the firing's, ``fired_at`` the further
    priorities and ``fired_for`` the further teams. It resolves on each team's routing key
    where any of them paged, and mails each set of recipients any of them mailed, once."""
    rules = engine.settings.routing_rules
    priorities = [firing.priority, *sorted(set(fired_at) - {firing.priority}, key=_worst_first)]
    teams = [firing.team, *sorted(set(fired_for) - {firing.team}, key=lambda t: t or "")]
    routes = [
        (team, p, route(rules, p, team, firing.alert_name, None))
        for team in teams
        for p in priorities
    ]
    once = f"{firing.idempotency_id}/{resolution}" if firing.idempotency_id and resolution else None
    paged = [
        t for t in teams if any(Channel.PAGERDUTY in r.channels for u, _, r in routes if u == t)
    ]
    done = []
    for n, team in enumerate(paged):
        claim = f"{once}/resolve" + (f"/{team}" if n else "") if once else None
        done.append(intake.lifecycle_once(engine, "resolve", dedup_key, team, source, claim))
    mailed: dict[str | None, tuple[str | None, NotificationPriority]] = {}
    for team, priority, rule in routes:
        if Channel.EMAIL in rule.channels:
            mailed.setdefault(rule.email_to, (team, priority))
    for n, (team, priority) in enumerate(mailed.values()):
        suffix = "/resolved" if n == 0 else f"/resolved/{priority.value}"
        resolved = firing.model_copy(
            update={
                "subject": f"[RESOLVED] {firing.subject}",
                "idempotency_id": f"{once or firing.idempotency_id}{suffix}",
                "channel": Channel.EMAIL,
                "priority": priority,
                "team": team,
            }
        )
        # Where the alert also paged, its resolve is queued already: the email is not
        # refused at the door for its own sake, but dead-lettered with the reason.
        job_id = intake.new_job_id()
        done.append(intake.accept(engine, resolved, job_id, source, check_email=not paged))
    if once is not None and not all(d.duplicate for d in done):
        # Only for a resolution seen for the first time: a copy of an old one, arriving
        # after the alert fired again from the same start, must not free that firing's id.
        fired = {str(firing.idempotency_id), *fired_as}
        engine.redis.delete(*(keys.idempotency(i) for i in sorted(fired)))
    return done


def _worst_first(priority: NotificationPriority) -> int:
    return -priority.rank
