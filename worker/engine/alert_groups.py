"""What an Alertmanager group was while it fired, for its resolve.

A receiver that opens one incident per group triggers again whenever the group's firing
alerts change, each time with the priority of the worst of them. By the time the group
resolves, the alert that paged may have left it (Alertmanager sends a resolved alert once,
then forgets it), so the resolved group alone would route its resolve by what is left:
an email, and the incident open for good. Each firing is remembered here instead: every
priority the group fired at and every firing's idempotency id, so the resolve goes where
any firing went and gives up every id (the group firing again later with the same alerts
is then a new incident, not a repeat). Fields are only ever added while it fires, so two
Alertmanagers of an HA pair writing at once lose nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.typing import EncodableT, FieldT

from worker.engine import keys
from worker.notification import NotificationPriority

#: Refreshed by every firing: a group that fires for longer is remembered as long.
REMEMBERED_SECONDS = 30 * 24 * 3600

_PRIORITY = "priority:"
_FIRING = "firing:"
_TEAM = "team:"


@dataclass(frozen=True)
class GroupMemory:
    """The priorities a group fired at, the teams it paged (None: the default routing
    key) and its firings' idempotency ids."""

    priorities: frozenset[NotificationPriority] = frozenset()
    teams: frozenset[str | None] = frozenset()
    firing_ids: frozenset[str] = frozenset()
    fields: tuple[str, ...] = ()

    def worst(self, *also: NotificationPriority) -> NotificationPriority:
        """The highest of the remembered priorities and ``also``."""
        ranked = [*self.priorities, *also]
        return max(ranked, key=lambda p: p.rank) if ranked else NotificationPriority.NORMAL


def remember(
    client: redis.Redis,
    group_id: str,
    priority: NotificationPriority,
    team: str | None,
    firing_id: str,
) -> None:
    """Note one firing of the group (before it is queued, so no firing goes unremembered)."""
    key = keys.alert_group(group_id)
    fields: dict[FieldT, EncodableT] = {
        f"{_PRIORITY}{priority.value}": 1,
        f"{_TEAM}{team or ''}": 1,
        f"{_FIRING}{firing_id}": 1,
    }
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping=fields)
    pipe.expire(key, REMEMBERED_SECONDS)
    pipe.execute()


def recall(client: redis.Redis, group_id: str) -> GroupMemory:
    """What the group fired as, since it was last forgotten."""
    fields = [str(f) for f in client.hkeys(keys.alert_group(group_id))]  # decoded by the client
    priorities: set[NotificationPriority] = set()
    for field in fields:
        if field.startswith(_PRIORITY):
            try:
                priorities.add(NotificationPriority(field.removeprefix(_PRIORITY)))
            except ValueError:
                continue  # a priority an older or newer version wrote
    teams = {f.removeprefix(_TEAM) or None for f in fields if f.startswith(_TEAM)}
    firing_ids = {f.removeprefix(_FIRING) for f in fields if f.startswith(_FIRING)}
    return GroupMemory(
        frozenset(priorities), frozenset(teams), frozenset(firing_ids), tuple(fields)
    )


def forget(client: redis.Redis, group_id: str, memory: GroupMemory) -> None:
    """Drop what ``memory`` read, and only that: a firing remembered since is kept."""
    if memory.fields:
        client.hdel(keys.alert_group(group_id), *memory.fields)
