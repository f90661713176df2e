"""Job records: what was asked, where it went, every attempt and how each one ended.

A job is one accepted notification (or acknowledge/resolve). It fans out to one delivery
per channel; each channel has a state:

    queued -> (deferred | retrying)* -> delivered | dead

Records live in Redis for ``JOB_TTL_SECONDS`` and answer ``gds-notify status JOB_ID``.
The ``delivered`` state is also what stops a job that Redis redelivers (after a worker
died) from being sent a second time.

Every delivery not yet final is also in ``keys.OPEN_DELIVERIES``, scored by the moment it
counts as stalled if nothing happens to it; each state change pushes that moment on. The
record keeps the delivery's message payload, so worker/recovery.py can publish it again
when the broker lost it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from config.settings import get_settings
from worker import keys
from worker.redis_store import get_redis

QUEUED = "queued"
DEFERRED = "deferred"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"
FINAL_STATES = (DELIVERED, DEAD)


# KEYS[1] job hash, KEYS[2] open deliveries; ARGV[1] ttl, ARGV[2] stall deadline, ARGV[3]
# n, ARGV[4..3+n] open-delivery members, then field, value, ... Creates the record and
# indexes its deliveries unless the record exists. Returns 1 when created. One round trip
# for intake, and a redelivered ``notify`` never overwrites the record its first run made.
_CREATE_IF_ABSENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 4, 3 + n do redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i]) end
return 1
"""

# KEYS[1] job hash, KEYS[2] attempts list, KEYS[3] open deliveries, KEYS[4] the claim;
# ARGV[1] channel, ARGV[2] ttl, ARGV[3] the attempt entry as JSON without its opening
# brace, ARGV[4] open-delivery member, ARGV[5] claim token, ARGV[6..] fields to set.
# Numbers the attempt (HINCRBY, as next_attempt does), records it, sets the fields, closes
# the delivery and releases our claim: a delivery's whole record in one round trip.
# Returns the attempt number.
_RECORD_DELIVERY = """
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts:' .. ARGV[1], 1)
redis.call('RPUSH', KEYS[2], '{"attempt": ' .. attempt .. ', ' .. ARGV[3])
redis.call('LTRIM', KEYS[2], -1000, -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[4])
if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
return attempt
"""


class JobStore:
    """Reads and writes job records; one instance per process is enough."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self._client = client

    @property
    def redis(self) -> redis.Redis:
        return self._client if self._client is not None else get_redis()

    @property
    def ttl(self) -> int:
        return get_settings().job_ttl_seconds

    def create(
        self,
        job_id: str,
        *,
        channels: list[str],
        action: str,
        source: str,
        team: str | None = None,
        notification: dict[str, Any] | None = None,
        dedup_key: str | None = None,
        replay_of: str | None = None,
        payloads: dict[str, dict[str, Any]] | None = None,
    ) -> bool:
        """Write the job's record unless it has one already (atomic: a redelivered
        ``notify`` never overwrites what its first run wrote). ``payloads`` (channel ->
        delivery message) make its deliveries recoverable. Returns whether it was written."""
        now = time.time()
        fields: dict[Any, Any] = {
            "id": job_id,
            "created_at": repr(now),
            "updated_at": repr(now),
            "action": action,
            "source": source,
            "channels": json.dumps(channels),
            "duplicates": "0",
        }
        if team:
            fields["team"] = team
        if notification is not None:
            fields["notification"] = json.dumps(notification)
        if dedup_key:
            fields["dedup_key"] = dedup_key
        if replay_of:
            fields["replay_of"] = replay_of
        for channel in channels:
            fields[f"state:{channel}"] = QUEUED
            fields[f"attempts:{channel}"] = "0"
        for channel, payload in (payloads or {}).items():
            fields[f"payload:{channel}"] = json.dumps(payload)
        stalled_at = now + get_settings().job_stall_seconds
        members = [f"{job_id}:{c}" for c in payloads or {}]
        flat = [item for pair in fields.items() for item in pair]
        created = self.redis.eval(
            _CREATE_IF_ABSENT,
            2,
            keys.job(job_id),
            keys.OPEN_DELIVERIES,
            self.ttl,
            repr(stalled_at),
            len(members),
            *members,
            *flat,
        )
        return bool(created)

    def state(self, job_id: str, channel: str) -> str | None:
        value = self.redis.hget(keys.job(job_id), f"state:{channel}")
        return str(value) if value is not None else None

    def next_attempt(self, job_id: str, channel: str) -> int:
        return int(self.redis.hincrby(keys.job(job_id), f"attempts:{channel}", 1))

    def set_state(
        self, job_id: str, channel: str, state: str, *, quiet_for: float = 0.0, **extra: Any
    ) -> None:
        """Move a channel to ``state``; ``quiet_for`` is how long it will rightly wait
        (a retry's countdown) before anything more happens to it."""
        now = time.time()
        fields: dict[Any, Any] = {f"state:{channel}": state, "updated_at": repr(now)}
        for name, value in extra.items():
            fields[f"{name}:{channel}"] = json.dumps(value)
        pipe = self.redis.pipeline()
        pipe.hset(keys.job(job_id), mapping=fields)
        pipe.expire(keys.job(job_id), self.ttl)
        member = f"{job_id}:{channel}"
        if state in FINAL_STATES:
            pipe.zrem(keys.OPEN_DELIVERIES, member)
        else:
            stalled_at = now + quiet_for + get_settings().job_stall_seconds
            pipe.zadd(keys.OPEN_DELIVERIES, {member: stalled_at}, xx=True)
        pipe.execute()

    def claim(self, job_id: str, channel: str, ttl: float) -> tuple[str | None, str | None]:
        """Start a delivery in one round trip: the channel's state, and a token for the
        right to deliver it for ``ttl`` seconds (None when the state is final or another
        worker holds the right). A claimed delivery's stall deadline moves on."""
        token = uuid.uuid4().hex
        stalled_at = time.time() + get_settings().job_stall_seconds
        state, taken = self.redis.eval(
            _CLAIM,
            3,
            keys.job(job_id),
            keys.delivery_claim(job_id, channel),
            keys.OPEN_DELIVERIES,
            channel,
            token,
            max(1, int(ttl * 1000)),
            repr(stalled_at),
            f"{job_id}:{channel}",
        )
        return (str(state) or None), (token if taken else None)

    def claim_remaining(self, job_id: str, channel: str) -> float:
        """Seconds left on another worker's claim (0 when there is none)."""
        left = int(self.redis.pttl(keys.delivery_claim(job_id, channel)))
        return max(0.0, left / 1000)

    def release(self, job_id: str, channel: str, token: str) -> None:
        self.redis.eval(_RELEASE, 1, keys.delivery_claim(job_id, channel), token)

    def state_and_payload(
        self, job_id: str, channel: str
    ) -> tuple[str | None, dict[str, Any] | None]:
        """The channel's state and the delivery message it was published with."""
        state, raw = self.redis.hmget(keys.job(job_id), [f"state:{channel}", f"payload:{channel}"])
        payload = json.loads(raw) if raw is not None else None
        return (str(state) if state is not None else None), payload

    def record_attempt(
        self,
        job_id: str,
        channel: str,
        *,
        attempt: int | None,
        outcome: str,
        latency_ms: float | None = None,
        error: dict[str, Any] | None = None,
        retry_in: float | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "at": time.time(),
            "channel": channel,
            "attempt": attempt,
            "outcome": outcome,
        }
        if latency_ms is not None:
            entry["latency_ms"] = round(latency_ms, 1)
        if error is not None:
            entry["error_class"] = error.get("type")
            entry["error"] = error.get("message")
        if retry_in is not None:
            entry["retry_in"] = round(retry_in, 3)
        pipe = self.redis.pipeline()
        pipe.rpush(keys.job_attempts(job_id), json.dumps(entry))
        pipe.ltrim(keys.job_attempts(job_id), -1000, -1)
        pipe.expire(keys.job_attempts(job_id), self.ttl)
        pipe.execute()

    def record_delivery(
        self,
        job_id: str,
        channel: str,
        *,
        latency_ms: float,
        result: dict[str, Any],
        claim: str = "",
    ) -> int:
        """Number, record and mark a successful attempt, close the delivery and release
        ``claim``, in one round trip. Returns the attempt number."""
        now = time.time()
        entry = {"at": now, "channel": channel, "outcome": DELIVERED}
        entry["latency_ms"] = round(latency_ms, 1)
        fields = {
            f"state:{channel}": DELIVERED,
            "updated_at": repr(now),
            f"result:{channel}": json.dumps(result),
        }
        return int(
            self.redis.eval(
                _RECORD_DELIVERY,
                4,
                keys.job(job_id),
                keys.job_attempts(job_id),
                keys.OPEN_DELIVERIES,
                keys.delivery_claim(job_id, channel),
                channel,
                self.ttl,
                json.dumps(entry)[1:],
                f"{job_id}:{channel}",
                claim,
                *[item for pair in fields.items() for item in pair],
            )
        )

    def add_duplicate(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hincrby(keys.job(job_id), "duplicates", 1)
        pipe.incr(keys.DUPLICATES)
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record and attempt history, or None when unknown or expired."""
        pipe = self.redis.pipeline()
        pipe.hgetall(keys.job(job_id))
        pipe.lrange(keys.job_attempts(job_id), 0, -1)
        raw, attempts = pipe.execute()
        if not raw:
            return None
        channels = json.loads(raw["channels"])
        record: dict[str, Any] = {
            "id": raw["id"],
            "action": raw.get("action"),
            "source": raw.get("source"),
            "team": raw.get("team"),
            "created_at": float(raw["created_at"]),
            "updated_at": float(raw["updated_at"]),
            "duplicates": int(raw.get("duplicates", 0)),
            "replay_of": raw.get("replay_of"),
            "dedup_key": raw.get("dedup_key"),
            "notification": json.loads(raw["notification"]) if "notification" in raw else None,
            "channels": {
                ch: {
                    "state": raw.get(f"state:{ch}"),
                    "attempts": int(raw.get(f"attempts:{ch}", 0)),
                    "result": json.loads(raw[f"result:{ch}"]) if f"result:{ch}" in raw else None,
                    "error": json.loads(raw[f"error:{ch}"]) if f"error:{ch}" in raw else None,
                }
                for ch in channels
            },
            "attempts": [json.loads(a) for a in attempts],
        }
        record["status"] = overall_status(record)
        return record


# KEYS[1] job hash, KEYS[2] the claim, KEYS[3] open deliveries; ARGV[1] channel, ARGV[2]
# token, ARGV[3] claim ttl (ms), ARGV[4] stall deadline, ARGV[5] open-delivery member.
# Returns {state or "", 1 if claimed}; a final state is never claimed.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state:' .. ARGV[1]) or ''
if state == 'delivered' or state == 'dead' then return {state, 0} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {state, 0} end
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[5])
return {state, 1}
"""

# Delete the claim only if it is still ours (it may have expired and been taken since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def overall_status(record: dict[str, Any]) -> str:
    states = [c["state"] for c in record["channels"].values()]
    if all(s == DELIVERED for s in states):
        return DELIVERED
    if any(s == DEAD for s in states):
        return "dead-lettered" if all(s in FINAL_STATES for s in states) else "partly dead"
    return "pending"
