"""Dead letters: every job that cannot be delivered, with its reason, attempts, last error
and times, kept in Redis until replayed or purged (Redis has no dead-letter exchange, so
the delivery code writes them itself)."""

from __future__ import annotations

import builtins
import json
import time
from typing import Any

import redis

from worker.channels import Channel
from worker.engine import keys, stats


def dead_letter_id(job_id: str, channel: str) -> str:
    """The dead letter of one job's delivery on one channel."""
    return f"{job_id}-{channel}"


def _counted_as(channel: str) -> str:
    """The channel a dead letter is counted under (one of a fixed few)."""
    return channel if channel in keys.DEAD_LETTER_CHANNELS else "intake"


def _index(channel: str | None) -> str:
    return keys.DEAD_LETTER_INDEX if channel is None else keys.dead_letter_channel(channel)


def no_job(letters: DeadLetters, job_id: str, shown_by: str | None = None) -> str:
    """Why there is no job ``job_id``: its message was dead-lettered before it became one
    (refused at intake, or one no task could run, kept under its task id), or it is
    unknown. ``shown_by`` names where the letter can be read instead of quoting its
    reason (for a caller not allowed to read dead letters)."""
    letter = letters.get(job_id)
    if letter is not None and letter.get("job_id") is None:
        said = "its message was dead-lettered before it became a job"
        if shown_by is not None:
            return f"no job {job_id!r}: {said}; {shown_by} has it"
        reason = " ".join(str(letter.get("reason")).split())[:300]  # one line
        return f"no job {job_id!r}: {said} ({reason}); `gds-notify dlq show {job_id}` has it"
    return f"no job {job_id!r} (unknown, or older than JOB_TTL_SECONDS)"


class DeadLetters:
    """The dead-letter store: a hash of records and an index by time of death."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(
        self,
        *,
        entry_id: str,
        job_id: str | None,
        channel: str,
        reason: str,
        payload: Any,
        attempts: int = 0,
        last_error: dict[str, Any] | None = None,
        first_seen: float | None = None,
        only_new: bool = False,
    ) -> dict[str, Any] | None:
        """Keep a dead letter under ``entry_id``, replacing one of that id (an Alertmanager
        repeat keeps when it was first seen). ``only_new``: never replace; None when the id
        is taken."""
        now = time.time()
        earlier = None if only_new else self.get(entry_id)
        kind = _counted_as(channel)
        old_kind = _counted_as(str(earlier["channel"])) if earlier is not None else kind
        changed_kind = old_kind != kind
        if changed_kind:
            # Another kind of letter under this id (a poison copy of a delivery's message
            # whose job then dead-lettered): it is replaced, and is no longer that kind.
            self.redis.zrem(keys.dead_letter_channel(old_kind), entry_id)
            earlier = None
        record = {
            "id": entry_id,
            "job_id": job_id,
            "channel": channel,
            "reason": reason,
            "attempts": attempts,
            "last_error": last_error,
            "first_seen": first_seen or (earlier["first_seen"] if earlier else now),
            "dead_at": now,
            "payload": payload,
        }
        text = json.dumps(record, default=str)
        if only_new and not self.redis.hsetnx(keys.DEAD_LETTERS, entry_id, text):
            return None
        pipe = self.redis.pipeline()
        if not only_new:
            pipe.hset(keys.DEAD_LETTERS, entry_id, text)
        pipe.zadd(keys.DEAD_LETTER_INDEX, {entry_id: now})
        pipe.zadd(keys.dead_letter_channel(kind), {entry_id: now})
        answers = pipe.execute()
        if only_new or changed_kind or (earlier is None and answers[0]):
            # Counted once each, for good: the kept letters shrink when they are replayed
            # or purged, and an alert on them would miss what died meanwhile. HSET (or
            # HSETNX) says which of two racing writers of one id created it.
            self.redis.hincrbyfloat(keys.STATS, *stats.count("dead_lettered", kind))
        return record

    def list(self, limit: int = 50, channel: str | None = None) -> list[dict[str, Any]]:
        """Newest first; only ``channel``'s (one of ``keys.DEAD_LETTER_CHANNELS``) if given."""
        found = self.redis.zrevrange(_index(channel), 0, max(0, limit - 1))
        ids = [str(i) for i in found]
        if not ids:
            return []
        raw = self.redis.hmget(keys.DEAD_LETTERS, ids)
        return [json.loads(r) for r in raw if r is not None]

    def count(self, channel: str | None = None) -> int:
        return int(self.redis.zcard(_index(channel)))

    def get(self, entry_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(keys.DEAD_LETTERS, entry_id)
        return json.loads(raw) if raw is not None else None

    def find(self, name: str) -> builtins.list[dict[str, Any]]:
        """The dead letter with id ``name``, else those of the job ``name`` (one per dead
        channel): what a person holding either id is looking for."""
        ids = [name, *(dead_letter_id(name, channel) for channel in Channel)]
        found = [json.loads(r) for r in self.redis.hmget(keys.DEAD_LETTERS, ids) if r]
        return found[:1] if found and found[0]["id"] == name else found

    def remove(self, entry_id: str) -> bool:
        pipe = self.redis.pipeline()
        pipe.hdel(keys.DEAD_LETTERS, entry_id)
        pipe.zrem(keys.DEAD_LETTER_INDEX, entry_id)
        for channel in keys.DEAD_LETTER_CHANNELS:
            pipe.zrem(keys.dead_letter_channel(channel), entry_id)
        removed = pipe.execute()[0]
        return bool(removed)

    def purge(self) -> int:
        """Remove every dead letter; returns how many there were."""
        pipe = self.redis.pipeline()
        pipe.zcard(keys.DEAD_LETTER_INDEX)
        pipe.delete(
            keys.DEAD_LETTERS,
            keys.DEAD_LETTER_INDEX,
            *map(keys.dead_letter_channel, keys.DEAD_LETTER_CHANNELS),
        )
        count, _ = pipe.execute()
        return int(count)
