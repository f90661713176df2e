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

import redis

from worker.engine import keys, scripts
from worker.notification import NotificationPriority

#: Refreshed by every webhook of the group.
REMEMBERED_SECONDS = 30 * 24 * 3600

_RANKED = sorted(NotificationPriority, key=lambda p: p.rank)
_MAIL = "mail:"


@dataclass(frozen=True)
class GroupState:
    """Where a group stands after a webhook."""

    idempotency_id: str
    team: str | None = None  # its open incident's, as fixed when it opened
    priority: NotificationPriority | None = None  # the worst its open incident fired at
    paged: bool = False
    mailed: tuple[str, ...] = ()

    @property
    def went_somewhere(self) -> bool:
        return self.paged or bool(self.mailed)


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
    ) -> GroupState:
        """The group fires with the set of alerts ``firing`` names: its state, with the id
        the firing's notification takes (``prefix`` and a count), the team its incident
        pages and the priority it has."""
        return self._move(group_id, f"firing:{firing}", prefix, True, team or "", priority.rank)

    def resolved(self, group_id: str, resolution: str, prefix: str) -> GroupState:
        """The group resolves (``resolution`` names the alerts and their ends): its state,
        with where its incident went."""
        return self._move(group_id, f"resolved:{resolution}", prefix, False, "", -1)

    def went(self, group_id: str, paged: bool, mailed_to: str | None) -> None:
        """Note where a firing's notification went (it was queued): the resolve goes there."""
        fields = {"paged": 1} if paged else {}
        if mailed_to:
            fields[f"{_MAIL}{mailed_to}"] = 1
        if fields:
            self.redis.hset(keys.alert_group(group_id), mapping=fields)  # type: ignore[arg-type]

    def _move(
        self, group_id: str, state: str, prefix: str, firing: bool, team: str, rank: int
    ) -> GroupState:
        flat = self._advance(
            keys=[keys.alert_group(group_id)],
            args=[state, prefix, 1 if firing else 0, team, rank, REMEMBERED_SECONDS],
        )
        held = dict(zip(flat[::2], flat[1::2], strict=True))
        rank_held = held.get("rank")
        return GroupState(
            idempotency_id=held["id"],
            team=held.get("team") or None,
            priority=_RANKED[int(rank_held)] if rank_held is not None else None,
            paged="paged" in held,
            mailed=tuple(sorted(f.removeprefix(_MAIL) for f in held if f.startswith(_MAIL))),
        )
