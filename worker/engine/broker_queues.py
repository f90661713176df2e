"""What the broker holds, read the way kombu's Redis transport keeps it: a list per queue
(pushed on the left, taken from the right) and one hash of the messages workers have taken
and not yet acknowledged, indexed by when each was taken. The engine reads these without
kombu (it may not import it); the stats and the recovery sweeps are the readers, and the
intake sweep puts back what a dead worker held."""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterable
from itertools import chain
from typing import Any, cast

import redis

from worker.engine import scripts

#: kombu's Redis transport: messages taken by a worker and not yet acknowledged.
UNACKED_HASH = "unacked"
#: ... and when each was taken (a sorted set of delivery tags, scored in seconds).
UNACKED_INDEX = "unacked_index"
#: The longest queue (or unacked hash) :meth:`BrokerQueues.holding` reads through.
LOOK_LIMIT = 2_000
#: Index entries read per round trip by :meth:`BrokerQueues.taken_before`.
PUT_BACK_BATCH = 200
#: kombu's Redis transport keeps a queue's messages of each priority step in a list of its
#: own: the queue's name for step 0, with this separator and the step for the others.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"
#: Where a message's task id starts: the first "id" key of the envelope, in its headers.
#: (The body before it is base64; root_id, parent_id and correlation_id end in "_id".)
_ID = '"id": "'


class BrokerQueues:
    """Looks for task messages in the broker, on the client it is handed."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._put_back = scripts.register(client, __file__, "broker_put_back")

    def holding(self, queue: str, task_ids: Iterable[str]) -> set[str] | None:
        """Which of ``task_ids`` have a message on ``queue`` or in a worker's hands (taken,
        not yet acknowledged), read in one transaction; None when the queue or the unacked
        hash is too long to read through (more than :data:`LOOK_LIMIT` messages).

        Read here rather than in a script: Redis copying thousands of messages into Lua
        blocks it for a tenth of a second and more, where sending them takes milliseconds.
        """
        wanted = set(task_ids)
        if not wanted:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hlen(UNACKED_HASH)
        if max(pipe.execute()) > LOOK_LIMIT:
            return None
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(queue, 0, -1)
        pipe.hvals(UNACKED_HASH)
        listed, taken = pipe.execute()
        return {t for t in map(task_id, chain(listed, taken)) if t in wanted}

    def taken(self, task_ids: Iterable[str]) -> set[str] | None:
        """Which of ``task_ids`` are in a worker's hands (taken, not yet acknowledged);
        None when the unacked hash is too long to read through."""
        wanted = set(task_ids)
        if not wanted:
            return set()
        if self.redis.hlen(UNACKED_HASH) > LOOK_LIMIT:
            return None
        entries = cast("list[str]", self.redis.hvals(UNACKED_HASH))
        return {t for t in map(task_id, entries) if t in wanted}

    def taken_before(self, moment: float, limit: int) -> list[tuple[str, str, float]]:
        """The messages workers took before ``moment`` (seconds since the epoch) and still
        hold, the oldest first, among the first ``limit`` the index lists: each one's
        delivery tag, its unacked entry as kombu wrote it, and when it was taken."""
        found: list[tuple[str, str, float]] = []
        read = 0
        while read < limit:
            batch = min(PUT_BACK_BATCH, limit - read)
            index = cast(
                "list[tuple[str, float]]",
                self.redis.zrangebyscore(
                    UNACKED_INDEX, "-inf", moment, start=read, num=batch, withscores=True
                ),
            )
            read += len(index)
            if index:
                tags = [tag for tag, _ in index]
                entries = cast("list[str | None]", self.redis.hmget(UNACKED_HASH, tags))
                found += [
                    (tag, entry, taken)
                    for (tag, taken), entry in zip(index, entries, strict=True)
                    if entry is not None  # acknowledged between the two reads
                ]
            if len(index) < batch:
                break
        return found

    def put_back(self, tag: str, entry: str, queue_list: str, message: str) -> bool:
        """Queue ``message`` again on ``queue_list`` in place of the unacked entry ``entry``
        (delivery tag ``tag``), as kombu's restore does, if that entry is still there as
        read; False when it is not (acknowledged, or put back, meanwhile)."""
        keys = [UNACKED_HASH, UNACKED_INDEX, queue_list]
        return bool(self._put_back(keys=keys, args=[tag, entry, message]))


def queue_list(queue: str, priority: Any) -> str:
    """The list kombu keeps ``queue``'s messages of ``priority`` (a message's
    ``properties.priority``: 0-9, anything else counting as 0) in."""
    try:
        level = max(0, min(int(priority), 9))
    except (TypeError, ValueError, OverflowError):
        level = 0
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, level) - 1]
    return f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue


def task_id(message: str) -> str | None:
    """The task id of a queued message, or of an unacked entry (``[message, exchange,
    routing key]``), both as kombu writes them; None when it has none."""
    start = message.find(_ID)
    if start < 0:
        return None
    start += len(_ID)
    end = message.find('"', start)
    return message[start:end] if end > start else None
