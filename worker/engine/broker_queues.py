"""What the broker holds, read the way kombu's Redis transport keeps it: a list per queue
(pushed on the left, taken from the right) and one hash of the messages workers have taken
and not yet acknowledged. The engine reads these without kombu (it may not import it); the
stats and the recovery sweep are the readers."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from worker.engine import scripts

#: kombu's Redis transport: messages taken by a worker and not yet acknowledged.
UNACKED_HASH = "unacked"
#: The longest queue (or unacked hash) :meth:`BrokerQueues.holding` reads through: one
#: script over that many messages blocks Redis for a few milliseconds.
LOOK_LIMIT = 5_000


class BrokerQueues:
    """Looks for task messages in the broker, on the client it is handed."""

    def __init__(self, client: redis.Redis) -> None:
        self._holds = scripts.register(client, __file__, "broker_holds")

    def holding(self, queue: str, task_ids: Iterable[str]) -> set[str] | None:
        """Which of ``task_ids`` have a message on ``queue`` or in a worker's hands (taken,
        not yet acknowledged), in one atomic look; None when the queue or the unacked hash
        is too long to read through (more than :data:`LOOK_LIMIT` messages)."""
        wanted = list(task_ids)
        if not wanted:
            return set()
        found = self._holds(keys=[queue, UNACKED_HASH], args=[LOOK_LIMIT, *wanted])
        return None if found is None else {str(i) for i in found}
