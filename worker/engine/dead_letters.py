"""Dead letters: every job that cannot be delivered, with its reason, attempts, last error
and times, kept in Redis until replayed or purged (Redis has no dead-letter exchange, so
the delivery code writes them itself)."""

from __future__ import annotations

import builtins
import json
import random
import time
from typing import Any

import redis

from worker.channels import Channel
from worker.engine import keys, stats


def dead_letter_id(job_id: str, channel: str) -> str:
    """The dead letter of one job's delivery on one channel."""
    return f"{job_id}-{channel}"


#: Letters read in one round trip when they are filtered by their reason.
_READ_AT_ONCE = 1000

#: Transactions tried before a letter that could not be kept is an outage of Redis.
WRITE_ATTEMPTS = 50

#: The largest payload refused at intake that its letter keeps whole, so that a replay can
#: send it once what refused it is mended (as much as the API takes in one request).
KEEP_WHOLE_CHARS = 1_048_576

#: How much is kept of a larger one: it may be hostile, and a letter stays until replayed.
KEEP_START_CHARS = 65_536


def json_size(value: Any) -> int:
    """How many characters ``value`` is as compact JSON (as an API body carries it)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def bounded(payload: Any) -> Any:
    """``payload`` whole when it is at most ``KEEP_WHOLE_CHARS`` as JSON, else the start of
    its text, in a form :func:`cut_short` recognises."""
    size = json_size(payload)
    if size <= KEEP_WHOLE_CHARS:
        return payload
    return {"truncated": repr(payload)[:KEEP_START_CHARS], "size": size}


def cut_short(payload: Any) -> int | None:
    """How long the payload was whose letter kept only its start (:func:`bounded`), else
    None."""
    if isinstance(payload, dict) and set(payload) == {"truncated", "size"}:
        size = payload["size"]
        return size if isinstance(size, int) else None
    return None


class DeadLetterNotKeptError(redis.RedisError):
    """A dead letter could not be written: callers treat it as Redis failing (a task puts
    its message back, the API answers 503), never as the job's failure."""


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


def _write(pipe: Any, letter: dict[str, Any], only_new: bool) -> dict[str, Any] | None:
    """Queue the writes that keep ``letter`` on ``pipe``, which watches the letters and
    runs each command at once until this has read the one kept under its id; None, and
    nothing queued, when ``only_new`` and the id is taken."""
    entry_id, kind = letter["id"], _counted_as(letter["channel"])
    raw = pipe.hget(keys.DEAD_LETTERS, entry_id)
    earlier = json.loads(raw) if raw is not None else None
    if only_new and earlier is not None:
        pipe.unwatch()
        return None
    now = time.time()
    old_kind = _counted_as(str(earlier["channel"])) if earlier is not None else None
    if not letter["first_seen"]:
        # Kept from the letter it replaces when that was the same kind (a repeat).
        seen = earlier["first_seen"] if earlier is not None and old_kind == kind else now
        letter = {**letter, "first_seen": seen}
    record = {**letter, "dead_at": now}
    pipe.multi()
    pipe.hset(keys.DEAD_LETTERS, entry_id, json.dumps(record, default=str))
    pipe.zadd(keys.DEAD_LETTER_INDEX, {entry_id: now})
    pipe.zadd(keys.dead_letter_channel(kind), {entry_id: now})
    if old_kind != kind:
        if old_kind is not None:
            # Another kind of letter under this id (a poison copy of a delivery's message
            # whose job then dead-lettered): it is replaced, and is no longer that kind.
            pipe.zrem(keys.dead_letter_channel(old_kind), entry_id)
        # Counted once each, for good: the kept letters shrink when they are replayed or
        # purged, and an alert on them would miss what died meanwhile.
        pipe.hincrbyfloat(keys.STATS, *stats.count("dead_lettered", kind))
    return record


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
        is taken.

        One transaction: the letter, its indexes and its count change together, so writers
        of one id racing (a poison copy of a delivery's message and that job's own letter)
        leave it listed under its own channel only and counted once for each kind it
        became, and a crash between them leaves nothing half kept."""
        letter = {
            "id": entry_id,
            "job_id": job_id,
            "channel": channel,
            "reason": reason,
            "attempts": attempts,
            "last_error": last_error,
            "first_seen": first_seen,
            "dead_at": None,
            "payload": payload,
        }
        with self.redis.pipeline() as pipe:
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    # The whole hash is watched: another letter written meanwhile costs a
                    # retry (after a short random pause, so writers racing spread out).
                    pipe.watch(keys.DEAD_LETTERS)  # type: ignore[no-untyped-call]
                    record = _write(pipe, letter, only_new)
                    if record is not None:
                        pipe.execute()
                    return record
                except redis.WatchError:
                    # Also what redis-py raises when the connection drops while watching.
                    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311
        raise DeadLetterNotKeptError(
            f"dead letter {entry_id!r} not kept: the letters changed under each of "
            f"{WRITE_ATTEMPTS} attempts (Redis busy, or its connection failing)"
        )

    def list(
        self, limit: int = 50, channel: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; only ``channel``'s (one of ``keys.DEAD_LETTER_CHANNELS``) and only
        those dead at ``since`` (epoch seconds) or later, if given."""
        lowest = "-inf" if since is None else since
        found = self.redis.zrevrangebyscore(_index(channel), "+inf", lowest, start=0, num=limit)
        ids = [str(i) for i in found]
        if not ids:
            return []
        raw = self.redis.hmget(keys.DEAD_LETTERS, ids)
        return [json.loads(r) for r in raw if r is not None]

    def matching(
        self,
        reason: str,
        limit: int = 50,
        channel: str | None = None,
        since: float | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """As :meth:`list`, only those whose reason holds ``reason`` (in any case), and how
        many there are in all. Reasons have no index: every letter in the range is read,
        a thousand at a time."""
        wanted = reason.casefold()
        lowest = "-inf" if since is None else since
        # The ids at one moment (small), then their letters in chunks: paging the index by
        # offset would read a letter twice, or skip one, as letters come and go meanwhile.
        ids = [str(i) for i in self.redis.zrevrangebyscore(_index(channel), "+inf", lowest)]
        found: builtins.list[dict[str, Any]] = []
        total = 0
        for start in range(0, len(ids), _READ_AT_ONCE):
            chunk = ids[start : start + _READ_AT_ONCE]
            for raw in self.redis.hmget(keys.DEAD_LETTERS, chunk):
                if raw is None:  # replayed or removed meanwhile
                    continue
                letter = json.loads(raw)
                if wanted in str(letter.get("reason") or "").casefold():
                    total += 1
                    if len(found) < limit:
                        found.append(letter)
        return found, total

    def count(self, channel: str | None = None, since: float | None = None) -> int:
        if since is None:
            return int(self.redis.zcard(_index(channel)))
        return int(self.redis.zcount(_index(channel), since, "+inf"))

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
