"""Every Redis key this service writes, named in one place. Nothing secret is ever part of
a key: routing keys appear only as a short hash."""

from __future__ import annotations

import hashlib
from typing import Literal, get_args

PREFIX = "gds:"


def digest(secret_or_id: str, length: int = 24) -> str:
    return hashlib.sha256(secret_or_id.encode("utf-8")).hexdigest()[:length]


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_attempts(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:attempts"


def job_duplicate(job_id: str) -> str:
    """The job a dropped copy (same idempotency id) was a duplicate of."""
    return f"{PREFIX}job:{job_id}:duplicate-of"


RECENT_JOBS = f"{PREFIX}jobs:recent"  # sorted set: job id by time accepted


def idempotency(idempotency_id: str) -> str:
    return f"{PREFIX}idem:{digest(idempotency_id, 40)}"


DEAD_LETTERS = f"{PREFIX}dlq"  # hash: entry id -> JSON record
DEAD_LETTER_INDEX = f"{PREFIX}dlq:index"  # sorted set: entry id by time of death
#: Where dead letters come from: a channel's delivery, intake, or the broker (poison).
DeadLetterChannel = Literal["pagerduty", "email", "intake", "broker"]
DEAD_LETTER_CHANNELS: tuple[str, ...] = get_args(DeadLetterChannel)


def dead_letter_channel(channel: str) -> str:
    """The dead letters of one channel (sorted set, as the index): counted at scrape."""
    return f"{PREFIX}dlq:index:{channel}"


def dead_letter_replay(entry_id: str) -> str:
    """The lock a replay of one dead letter holds (worker/engine/replay.py)."""
    return f"{PREFIX}dlq:replaying:{digest(entry_id, 40)}"


# worker/engine/stats.py: every counter and histogram, one field each.
STATS = f"{PREFIX}stats"
QUEUE_OLDEST = f"{PREFIX}stats:oldest"  # hash: queue list -> "message-id first-seen-time"
RECOVERY_LAST = f"{PREFIX}jobs:recovery:last"  # Redis time of the last recovery sweep
WATCHDOG_LAST = f"{PREFIX}watchdog:last"  # Redis time the last canary arrived
WRITE_PROBE = f"{PREFIX}probe:write"  # written by scrapes and readiness: Redis takes writes
WATCHDOG_DEAD_SEEN = f"{PREFIX}watchdog:dead-lettered"  # how many were written by that canary

# Deliveries not yet delivered or dead: "JOBID:CHANNEL" scored by when the recovery sweep
# next looks at it (worker/engine/recovery.py).
OPEN_DELIVERIES = f"{PREFIX}jobs:open"


def open_since(channel: str) -> str:
    """Sorted set: the job ids with ``channel``'s delivery not yet final, scored by when
    each job was accepted (how late its oldest undelivered notification is)."""
    return f"{PREFIX}jobs:open-since:{channel}"


RECOVERY_LOCK = f"{PREFIX}jobs:recovery:lock"


def incident_order(team: str | None, dedup_key: str) -> str:
    """The newest event job for an incident (a team's routing key and a dedup key): each
    event for it goes out after the one queued before it."""
    return f"{PREFIX}pd:incident:{digest((team or '').strip().lower() + chr(0) + dedup_key, 40)}"


def delivery_claim(job_id: str, channel: str) -> str:
    """Held while one worker delivers this job's channel: a second copy stands aside."""
    return f"{PREFIX}job:{job_id}:claim:{channel}"


#: Shared rate windows (worker/engine/rate_limit.py): PagerDuty's, per routing key, and
#: the HTTP API's, per token. Under each: ``rate:ID`` (the window), ``pause:ID``.
PAGERDUTY_RATE = f"{PREFIX}pd"
API_RATE = f"{PREFIX}api"
PING_RATE = f"{PREFIX}ping"


def rate_window(namespace: str, key_id: str) -> str:
    return f"{namespace}:rate:{key_id}"


def rate_pause(namespace: str, key_id: str) -> str:
    return f"{namespace}:pause:{key_id}"


def rate_strikes(namespace: str, key_id: str) -> str:
    """429s without a named wait while they keep coming: how far the pause has doubled."""
    return f"{namespace}:strikes:{key_id}"


# Heartbeats (worker/engine/heartbeats/). Slugs are validated by the catalogue before use.
HEARTBEAT_LAST = f"{PREFIX}hb:last"  # hash: slug -> {"at", "status"} of the newest heartbeat
HEARTBEAT_STATE = f"{PREFIX}hb:state"  # hash: slug -> ServiceState JSON
#: hash: slug -> the newest failure the service reported that no check has taken in yet
#: ({"id", "at", "via", "body"}); the check that takes it in deletes it with its state change.
HEARTBEAT_FAILED = f"{PREFIX}hb:failed"
HEARTBEAT_CHECK_LOCK = f"{PREFIX}hb:check:lock"  # one evaluation at a time
HEARTBEAT_LAST_CHECK = f"{PREFIX}hb:check:last"  # Redis time of the last finished check
HEARTBEAT_HELD_AT = f"{PREFIX}hb:check:held"  # Redis time a check last held silence


HEARTBEAT_SERVICES = f"{PREFIX}hb:services"  # hash: slug -> a service registered at run time
HEARTBEAT_CHECK_SOON = f"{PREFIX}hb:check:soon"  # set while an early check is queued
HEARTBEAT_CHECK_IDLE = f"{PREFIX}hb:check:idle"  # time of the last check with no catalogue
HEARTBEAT_SUMMARY = f"{PREFIX}hb:summary"  # JSON: how many services in each state


def heartbeats(slug: str) -> str:
    return f"{PREFIX}hb:beats:{slug}"  # sorted set of "up" heartbeats, scored by time


def heartbeat_log(slug: str) -> str:
    return f"{PREFIX}hb:log:{slug}"  # list of the service's latest pings, newest first


def heartbeat_runs(slug: str) -> str:
    return f"{PREFIX}hb:runs:{slug}"  # hash: run id ("" for none) -> when it started


# Workers that are up (worker/engine/workers.py): hostname scored by when it last said so.
WORKERS = f"{PREFIX}workers"
WORKERS_INFO = f"{PREFIX}workers:info"  # hash: hostname -> {"queues", "pid"} as JSON
#: zset: "<boot> <hostname>" -> when that worker process last said it was up.
WORKER_BOOTS = f"{PREFIX}workers:boots"


def alert_group(group_id: str) -> str:
    """Hash: what an Alertmanager group paged as while it fired (worker/engine/alert_groups.py)."""
    return f"{PREFIX}alertmanager:group:{group_id}"
