"""An Alertmanager group as one incident (the webhook's ``?incident=group``).

Each webhook names the group's state: the set of its firing alerts, or its resolution.
The group's hash in Redis holds the last state and its id (a counter: a new state takes a
new id, the same state again the same id, so a repeat, or the copy that the other
Alertmanager of an HA pair sends, is one job), and, while its incident is open, the team
whose routing key it pages (fixed when it opens: the group's common labels can change
under it), the worst priority it fired at (an incident's priority does not fall while it is
open), and where it went: paged, and to which recipients it mailed. Its resolve goes to
exactly those, however the group has changed by then (the alert that paged may have left
it) or the routing rules since; kept until the group fires again after it, so a late copy
of the resolution finds them and is taken for the copy it is. Moving on is one Lua
script, so two webhooks at once agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from worker.addresses import parse_recipients
from worker.channels import Channel
from worker.engine import keys, scripts
from worker.engine.jobs import JobStore
from worker.exceptions import InvalidFieldError
from worker.job_request import JobRequest
from worker.notification import NotificationPriority

#: Refreshed by every webhook of the group.
REMEMBERED_SECONDS = 30 * 24 * 3600

_RANKED = sorted(NotificationPriority, key=lambda p: p.rank)
_MAIL = "mail:"


@dataclass(frozen=True)
class GroupState:
    """Where a group stands after a webhook."""

    idempotency_id: str
    state: str = ""  # "firing:<its alerts>" or "resolved:<the resolution>"
    team: str | None = None  # its open incident's, as fixed when it opened
    priority: NotificationPriority | None = None  # the worst its open incident fired at
    paged: bool = False
    mailed: tuple[str, ...] = ()
    #: The webhook was a late copy of an earlier resolution (the group fires anew).
    stale: bool = False

    @property
    def went_somewhere(self) -> bool:
        return self.paged or bool(self.mailed)


def as_incident(request: JobRequest, state: GroupState) -> JobRequest:
    """A group's firing as its incident has it: under the state's idempotency id, with the
    team the incident opened with and the highest priority it fired at. Its PagerDuty
    severity then follows that priority, not the lower severity its alerts now carry."""
    update: dict[str, Any] = {
        "idempotency_id": state.idempotency_id,
        "team": state.team,
        "priority": state.priority or request.priority,
    }
    if update["priority"] != request.priority:
        update["metadata"] = {k: v for k, v in request.metadata.items() if k != "severity"}
    return request.model_copy(update=update)


class AlertGroups:
    """The groups' states, on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._advance = scripts.register(client, __file__, "alert_groups_advance")

    def fired(
        self,
        group_id: str,
        firing: str,
        prefix: str,
        team: str | None,
        priority: NotificationPriority,
        since: float | None = None,
    ) -> GroupState:
        """The group fires with the set of alerts ``firing`` names (the latest of them
        started at ``since``): its state, with the id the firing's notification takes
        (``prefix`` and a count), the team its incident pages and the priority it has."""
        state = f"firing:{firing}"
        return self._move(group_id, state, prefix, True, team or "", priority.rank, since)

    def resolved(
        self, group_id: str, resolution: str, prefix: str, ended: float | None = None
    ) -> GroupState:
        """The group resolves (``resolution`` names the alerts and their ends, the latest at
        ``ended``): its state, with where its incident went; ``stale`` when every alert of it
        ended before the firing in force began."""
        return self._move(group_id, f"resolved:{resolution}", prefix, False, "", -1, ended)

    def current(self, group_id: str) -> GroupState | None:
        """Where the group stands now; None when it was never seen (or forgotten)."""
        held = cast(dict[str, str], self.redis.hgetall(keys.alert_group(group_id)))
        return _state(held) if held.get("id") else None

    def went(self, group_id: str, jobs: JobStore, job_id: str) -> None:
        """Note where the firing queued as ``job_id`` went, as its job record says (for a
        copy, the first job's: what was sent, not what today's rules would send). The
        resolve goes there. Recipients that are not addresses (a route with no
        ``email_to``: the email is dead-lettered) are not noted."""
        fields: dict[FieldT, EncodableT] = {}
        for channel in jobs.channels(job_id):
            if channel is Channel.PAGERDUTY:
                fields["paged"] = 1
                continue
            _, payload = jobs.state_and_payload(job_id, channel)
            if payload is None:
                continue
            to = payload.get("email_to") or (payload.get("notification") or {}).get("recipient")
            try:
                parse_recipients("recipient", str(to))
            except InvalidFieldError:
                continue
            fields[f"{_MAIL}{to}"] = 1
        if fields:
            self.redis.hset(keys.alert_group(group_id), mapping=fields)

    def _move(
        self,
        group_id: str,
        state: str,
        prefix: str,
        firing: bool,
        team: str,
        rank: int,
        moment: float | None,
    ) -> GroupState:
        flat = self._advance(
            keys=[keys.alert_group(group_id)],
            args=[
                state,
                prefix,
                1 if firing else 0,
                team,
                rank,
                REMEMBERED_SECONDS,
                "" if moment is None else repr(moment),
            ],
        )
        return _state(dict(zip(flat[::2], flat[1::2], strict=True)))


def _state(held: dict[str, str]) -> GroupState:
    rank_held = held.get("rank")
    return GroupState(
        idempotency_id=held["id"],
        state=held.get("state", ""),
        team=held.get("team") or None,
        priority=_RANKED[int(rank_held)] if rank_held is not None else None,
        paged="paged" in held,
        mailed=tuple(sorted(f.removeprefix(_MAIL) for f in held if f.startswith(_MAIL))),
        stale="stale" in held,
    )
